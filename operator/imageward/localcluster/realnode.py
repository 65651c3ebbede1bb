"""A real kubelet node beside the kwok ones: pods that really run.

kubelet and kube-proxy (built by `make tools` from the same Kubernetes module as the
control plane), containerd with its CRI plugin (root, state and socket of its own), CNI
from Debian's containernetworking-plugins (bridge + host-local + portmap + loopback) and a
pause image built here (`hack/pause`). The node authenticates as `system:node:<name>` in
group `system:nodes`; kubelet keeps anonymous access off and asks the apiserver (webhook
authn/authz) about every request, which the apiserver signs with its kubelet client
certificate, so `kubectl logs/exec` work as in a real cluster.

A real node changes the host (sysctls, iptables, mounts, cgroups, a bridge, fixed paths
such as /var/lib/kubelet/device-plugins and /var/log/containers). Before anything starts,
`start()` writes a journal (`<base>/journal.json`) holding a `hoststate.Snapshot` and the
identity of each daemon it starts; `stop()` puts the host back from it, in the order that
works (pods deleted through the kubelet, kubelet, remaining tasks, containerd, mounts,
network, cgroups, sysctls, firewall, paths). A run that died without `stop()` (a killed
test process, a killed kubelet) leaves the journal behind, and the next `start()` cleans
up from it first. One real node per machine: a lock file says who runs it.

`python -m imageward.localcluster.realnode --attach PLANE_WORKDIR` runs one against a
control plane another process started, until it is killed.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import pathlib
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import yaml

from imageward.localcluster import containerd, controlplane, hoststate, images, processes, tools

logger = logging.getLogger(__name__)

BASE_DIR = pathlib.Path("/var/lib/imageward-realnode")
LOCK_PATH = pathlib.Path("/run/lock/imageward-realnode.lock")
NODE_NAME = "real-node"
BRIDGE = "iw-cni0"
CNI_NETWORK = "imageward-realnode"
POD_CIDR = "10.244.0.0/24"
PAUSE_IMAGE = "imageward.local/pause:1.0"
#: Every real node carries this label, and (unless started with taint=False) a NoSchedule
#: taint of the same key, so the kwok tests' pods and DaemonSets stay off it.
NODE_LABEL_KEY = "imageward.io/node"
NODE_LABEL_VALUE = "real"
TAINT_KEY = "imageward.io/real-node"
#: The top-level cgroup kubelet puts every pod under (cgroupfs driver, cgroupsPerQOS).
KUBEPODS_CGROUP = "kubepods"
KUBELET_FIXED_DIR = "/var/lib/kubelet"  # device-plugins/ is there whatever --root-dir says
#: Host paths the node's components create whatever they are told; each is removed on
#: stop when it did not exist before start. /run/containerd/s holds every containerd
#: shim's socket on the machine (a compiled-in path), so only stale sockets are removed.
FIXED_PATHS = (
    KUBELET_FIXED_DIR,
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/cni",
    "/etc/cni",
    "/opt/cni",
    "/opt/containerd",
    "/run/netns",
    "/run/containerd",
)
SHIM_SOCKETS = pathlib.Path("/run/containerd/s")
CLUSTER_ROLE_BINDINGS = ("imageward:real-nodes", "imageward:apiserver-kubelet-client")


class RealNodeError(RuntimeError):
    """The real node did not start or stop; the message names the process and its log."""


class CleanupError(RealNodeError):
    """Some host change could not be undone; `left` lists each, the journal is kept."""

    def __init__(self, left: Sequence[str], journal: pathlib.Path) -> None:
        self.left = list(left)
        self.journal = journal
        lines = "\n  ".join(self.left)
        super().__init__(
            f"the real node left {len(self.left)} change(s) on the host:\n  {lines}\n"
            f"the journal {journal} is kept: the next start tries again"
        )


# -- pure builders -----------------------------------------------------------------------


def host_platform() -> images.Platform:
    machine = platform.machine()
    architecture = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    return images.Platform("linux", architecture, "v8" if architecture == "arm64" else None)


def build_pause_image(pause: bytes, *, platform_: images.Platform | None = None) -> images.Manifest:
    """The sandbox image: only the static pause binary, as uid 65535 like upstream's."""
    layer = images.layer_from_files({"pause": (pause, 0o755)})
    return images.build_image(
        [layer],
        platform=platform_ or host_platform(),
        user="65535:65535",
        env=(),
        entrypoint=["/pause"],
        labels={"org.opencontainers.image.title": "imageward-pause"},
    )


def build_oci_archive(manifest: images.Manifest, name: str) -> bytes:
    """An OCI image layout tar of one image manifest, named `name` for `ctr images import`."""
    index = {
        "schemaVersion": 2,
        "mediaType": images.OCI_INDEX,
        "manifests": [
            {
                **manifest.descriptor(),
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1],
                },
            }
        ],
    }
    files: dict[str, images.FileContent] = {
        "oci-layout": images.canonical_json({"imageLayoutVersion": "1.0.0"}),
        "index.json": images.canonical_json(index),
        f"blobs/sha256/{manifest.digest.split(':', 1)[1]}": manifest.body,
    }
    for blob in manifest.blobs:
        files[f"blobs/sha256/{blob.digest.split(':', 1)[1]}"] = blob.data
    return images.build_tar(files)


def build_cni_config(*, bridge: str, subnet: str, ipam_dir: pathlib.Path) -> dict[str, Any]:
    """bridge + host-local + portmap (containerd adds loopback itself from the same bin dir).

    host-local keeps its leases under our directory instead of /var/lib/cni/networks.
    """
    return {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def build_kubelet_config(
    *,
    node_ip: str,
    port: int,
    healthz_port: int,
    client_ca: pathlib.Path,
    tls_cert: pathlib.Path,
    tls_key: pathlib.Path,
    runtime_socket: pathlib.Path,
    pod_logs_dir: pathlib.Path,
    taints: Sequence[Mapping[str, str]],
) -> dict[str, Any]:
    """The KubeletConfiguration verified on the project machines (facts.md)."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node_ip,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "tlsCertFile": str(tls_cert),
        "tlsPrivateKeyFile": str(tls_key),
        # No anonymous access: the apiserver's kubelet client certificate is checked
        # against the cluster CA, and each request is authorised by the apiserver.
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(client_ca)},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{runtime_socket}",
        "cgroupDriver": "cgroupfs",  # no systemd on these machines
        "cgroupsPerQOS": True,
        "failSwapOn": False,
        "failCgroupV1": False,  # the VMs run cgroup v1; kubelet only warns
        "protectKernelDefaults": False,  # kubelet sets its tunables; stop() restores them
        "makeIPTablesUtilChains": False,  # kube-proxy owns iptables here
        "serializeImagePulls": False,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        # Low thresholds: the shared disk is often fuller than kubelet's defaults allow,
        # and a test node must not evict its pods or collect its images.
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
            "imagefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "podLogsDir": str(pod_logs_dir),  # keeps /var/log/pods off the host
        "resolvConf": "/etc/resolv.conf",
        "clusterDomain": "cluster.local",  # no cluster DNS: pods use dnsPolicy Default
        "registerWithTaints": [dict(taint) for taint in taints],
        "maxPods": 110,
    }


def build_kube_proxy_config(
    *,
    kubeconfig: pathlib.Path,
    node_name: str,
    cluster_cidr: str,
    healthz_port: int,
    metrics_port: int,
) -> dict[str, Any]:
    """iptables mode, touching no sysctl it can avoid: no conntrack tuning, no NodePorts on
    127.0.0.1 (they need net.ipv4.conf.all.route_localnet=1)."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "hostnameOverride": node_name,
        "clusterCIDR": cluster_cidr,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "nodePortAddresses": ["primary"],
        "iptables": {"localhostNodePorts": False, "syncPeriod": "30s", "minSyncPeriod": "0s"},
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "oomScoreAdj": 0,  # no CAP_SYS_RESOURCE in the VMs: a negative value is refused
    }


def build_kubeconfig(server: str, ca: bytes, cert: bytes, key: bytes, user: str) -> dict[str, Any]:
    import base64

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "imageward",
                "cluster": {"server": server, "certificate-authority-data": b64(ca)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)},
            }
        ],
        "contexts": [{"name": "imageward", "context": {"cluster": "imageward", "user": user}}],
        "current-context": "imageward",
    }


def build_rbac() -> list[dict[str, Any]]:
    """The bindings the harness's apiserver (RBAC only, no Node authorizer) needs."""
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": CLUSTER_ROLE_BINDINGS[0]},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:node",
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": CLUSTER_ROLE_BINDINGS[1]},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:kubelet-api-admin",
            },
            "subjects": [
                {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "User",
                    "name": controlplane.KUBELET_CLIENT_USER,
                }
            ],
        },
    ]


# -- where things live -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layout:
    """Every path of one real node, under one base directory (kept short: unix sockets)."""

    base: pathlib.Path

    @property
    def journal(self) -> pathlib.Path:
        return self.base / "journal.json"

    @property
    def socket(self) -> pathlib.Path:
        return self.base / "containerd.sock"

    @property
    def containerd(self) -> pathlib.Path:
        return self.base / "containerd"

    @property
    def kubelet_root(self) -> pathlib.Path:
        return self.base / "kubelet"

    @property
    def pki(self) -> pathlib.Path:
        return self.base / "pki"

    @property
    def config(self) -> pathlib.Path:
        return self.base / "config"

    @property
    def hosts_dir(self) -> pathlib.Path:
        return self.base / "certs.d"

    @property
    def cni_conf_dir(self) -> pathlib.Path:
        return self.base / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> pathlib.Path:
        return self.base / "cni" / "ipam"

    @property
    def pod_logs(self) -> pathlib.Path:
        return self.base / "pod-logs"

    @property
    def mount_prefixes(self) -> list[str]:
        return [str(self.base), KUBELET_FIXED_DIR]


def take_host_snapshot(base_dir: pathlib.Path = BASE_DIR) -> hoststate.Snapshot:
    """The host as a real node (of `base_dir`) would change it: compare two with
    `host_changes`."""
    return hoststate.take_snapshot(
        [*FIXED_PATHS, str(base_dir)],
        mount_scope=[*Layout(base_dir).mount_prefixes, *FIXED_PATHS],
        cgroup_trees=[KUBEPODS_CGROUP],
    )


def stale_shim_sockets() -> list[str]:
    """Shim sockets in /run/containerd/s that no process holds (what a dead shim leaves)."""
    if not SHIM_SOCKETS.is_dir():
        return []
    alive = _listening_unix_paths()
    return sorted(str(e) for e in SHIM_SOCKETS.iterdir() if e.is_socket() and str(e) not in alive)


def host_changes(before: hoststate.Snapshot, after: hoststate.Snapshot | None = None) -> list[str]:
    """What differs on the host between `before` and `after` (default: now) that a real
    node could have left: `hoststate.differences`, except that /run/containerd is shared
    by every containerd on the machine (the harness's other instances keep their runc
    state and fifos there, made at any time), so there only stale shim sockets count."""
    after = after or take_host_snapshot()
    shared = str(SHIM_SOCKETS.parent)
    changes = [
        change
        for change in hoststate.differences(before, after)
        if not change.startswith(f"path {shared} ")
    ]
    return changes + [f"stale shim socket left: {path}" for path in stale_shim_sockets()]


# -- the journal and leftovers -------------------------------------------------------------


def _process_start_time(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot (None when it is gone)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


@dataclasses.dataclass
class Journal:
    """What a start changed, written before it changes anything (JSON on disk)."""

    node: str
    bridge: str
    before: hoststate.Snapshot
    #: name -> [pid, start time]: enough to kill exactly our daemon after a crash, never
    #: a process that reused its pid
    processes: dict[str, list[int]] = dataclasses.field(default_factory=dict)

    def write(self, path: pathlib.Path) -> None:
        document = {
            "node": self.node,
            "bridge": self.bridge,
            "before": self.before.to_json(),
            "processes": self.processes,
        }
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(document))
        os.replace(temporary, path)

    @classmethod
    def read(cls, path: pathlib.Path) -> Journal:
        document = json.loads(path.read_text())
        return cls(
            node=document["node"],
            bridge=document["bridge"],
            before=hoststate.Snapshot.from_json(document["before"]),
            processes={k: list(v) for k, v in document["processes"].items()},
        )


def _kill_recorded(journal: Journal, name: str, *, grace: float = 5.0) -> None:
    """SIGTERM then SIGKILL the process group of daemon `name`, if it is still ours."""
    if name not in journal.processes:
        return
    pid, started = journal.processes[name]
    if _process_start_time(pid) != started:
        return  # exited (or its pid now belongs to someone else)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _process_start_time(pid) == started and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    while _process_start_time(pid) == started and time.monotonic() < deadline + 5:
        time.sleep(0.05)


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains `text` (e.g. shims started for our socket)."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def _listening_unix_paths() -> set[str]:
    paths = set()
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/net/unix").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 8:
                paths.add(fields[7].lstrip("@"))
    return paths


def _remove_stale_shim_sockets() -> None:
    """Sockets in /run/containerd/s no process holds any more (shims of ours that died)."""
    for path in stale_shim_sockets():
        with contextlib.suppress(OSError):
            os.unlink(path)


def _remove_path(path: pathlib.Path) -> str | None:
    if not os.path.lexists(path):
        return None
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError as e:
        return f"path {path} not removed: {e}"
    return None


def _ctr(socket: pathlib.Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tools.find("ctr")), "--address", str(socket), "-n", "k8s.io", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _remove_tasks(socket: pathlib.Path) -> None:
    """Kill and delete every task and container left in the node's containerd (shims
    outlive containerd and keep rootfs mounts, so they go first, through containerd)."""
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        listed = _ctr(socket, "tasks", "ls", "-q", timeout=10)
        if listed.returncode != 0:
            return
        tasks = listed.stdout.split()
        for task in tasks:
            _ctr(socket, "tasks", "kill", "-a", "-s", "SIGKILL", task, timeout=10)
        for task in tasks:
            _ctr(socket, "tasks", "rm", "-f", task, timeout=20)
        containers = _ctr(socket, "containers", "ls", "-q", timeout=10).stdout.split()
        for container in containers:
            _ctr(socket, "containers", "rm", container, timeout=20)


def teardown(layout: Layout, journal: Journal) -> list[str]:
    """Undo what a real node did to the host, from its journal; returns what stayed.

    Runs from `stop()` and from the next `start()` after a crash, so it assumes nothing
    about which daemons are still alive.
    """
    left: list[str] = []
    for name in ("kube-proxy", "kubelet"):
        _kill_recorded(journal, name)
    if layout.socket.exists():
        _remove_tasks(layout.socket)
    _kill_recorded(journal, "containerd")
    # Pods' processes whose shim lost its containerd (they keep mounts busy), then the
    # shims themselves (each names our socket on its command line).
    left += hoststate.kill_cgroup_processes(KUBEPODS_CGROUP)
    for pid in _processes_mentioning(f"-address {layout.socket}"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    left += hoststate.unmount_under(layout.mount_prefixes)
    for veth in hoststate.links_with_master(journal.bridge):
        if problem := hoststate.delete_link(veth):
            left.append(problem)
    if journal.bridge not in journal.before.links and (
        problem := hoststate.delete_link(journal.bridge)
    ):
        left.append(problem)
    left += hoststate.remove_cgroup_tree(KUBEPODS_CGROUP)
    left += hoststate.restore_sysctls(journal.before.sysctls)
    try:
        left += hoststate.restore_firewall(journal.before.nftables, journal.before.iptables_saves)
    except (hoststate.HostStateError, tools.ToolMissingError) as e:
        left.append(f"firewall not restored: {e}")
    _remove_stale_shim_sockets()
    for fixed in FIXED_PATHS:
        path = pathlib.Path(fixed)
        if journal.before.paths.get(fixed, True):
            continue
        if path == SHIM_SOCKETS.parent:
            # Other containerd instances on the machine may have live shims there now.
            for directory in (SHIM_SOCKETS, SHIM_SOCKETS.parent):
                with contextlib.suppress(OSError):
                    directory.rmdir()
            continue
        if problem := _remove_path(path):
            left.append(problem)
    if not left and layout.base.exists():
        for entry in layout.base.iterdir():
            if entry != layout.journal and (problem := _remove_path(entry)):
                left.append(problem)
    return left


def finish_teardown(layout: Layout) -> None:
    """Remove the journal and the base directory: the host is as it was."""
    with contextlib.suppress(FileNotFoundError):
        layout.journal.unlink()
    with contextlib.suppress(OSError):
        layout.base.rmdir()


# -- the lock ------------------------------------------------------------------------------


def _acquire_lock(path: pathlib.Path, *, timeout: float = 0.0) -> int:
    """Take the machine's real-node lock, waiting up to `timeout` seconds for its holder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if time.monotonic() < deadline:
                if not waited:
                    logger.warning("waiting for the real node of pid %s to stop", holder)
                    waited = True
                time.sleep(1.0)
                continue
            raise RealNodeError(
                f"a real node already runs on this machine (pid {holder}, lock {path}); "
                "only one per machine: its kubelet owns fixed host paths"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file its previous owner unlinked while we waited
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def _release_lock(path: pathlib.Path, fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.close(fd)


# -- the node ------------------------------------------------------------------------------


class RealNode:
    """One real kubelet node joined to `plane`; `start()`, use, `stop()` (or a `with`).

    For tests: `containerd` (a `containerd.Containerd` handle on the node's daemon, for
    `ctr` and content-store assertions), `add_registry()` (pull configuration),
    `placement` (the nodeSelector and toleration that put a pod here), `pause_image`
    (present on the node, never pulled), `start_seconds`/`stop_seconds`.
    """

    def __init__(
        self,
        plane: controlplane.ControlPlane,
        *,
        name: str = NODE_NAME,
        log_dir: pathlib.Path | None = None,
        base_dir: pathlib.Path = BASE_DIR,
        lock_path: pathlib.Path = LOCK_PATH,
        taint: bool = True,
        startup_timeout: float = 90.0,
        lock_timeout: float = 0.0,
    ) -> None:
        """`lock_timeout`: how long `start()` waits for another process's real node on this
        machine to stop (0: fail at once, naming its pid)."""
        self.plane = plane
        self.name = name
        self.layout = Layout(base_dir)
        self.lock_path = lock_path
        self.log_dir = log_dir or pathlib.Path(tempfile.mkdtemp(prefix="imageward-realnode-"))
        self.taint = taint
        self.startup_timeout = startup_timeout
        self.lock_timeout = lock_timeout
        self.pause_image = PAUSE_IMAGE
        self.node_ip = ""
        self.before: hoststate.Snapshot | None = None
        self.start_seconds: float | None = None
        self.stop_seconds: float | None = None
        #: whether the last start cleaned up after a previous run that died without stop()
        self.recovered: bool = False
        self._lock_fd: int | None = None
        self._journal: Journal | None = None
        self._containerd: containerd.Containerd | None = None
        self._kubelet: processes.ManagedProcess | None = None
        self._kube_proxy: processes.ManagedProcess | None = None
        self._registries: dict[str, str] = {}

    def __enter__(self) -> RealNode:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what tests use ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Started and not stopped (its daemons may have died meanwhile)."""
        return self._journal is not None

    @property
    def socket(self) -> pathlib.Path:
        """The node's containerd socket (for `ctr --address`)."""
        return self.layout.socket

    @property
    def containerd(self) -> containerd.Containerd:
        if self._containerd is None:
            raise RealNodeError("the real node is not running")
        return self._containerd

    @property
    def kubelet(self) -> processes.ManagedProcess:
        if self._kubelet is None:
            raise RealNodeError("the real node is not running")
        return self._kubelet

    @property
    def kube_proxy(self) -> processes.ManagedProcess:
        if self._kube_proxy is None:
            raise RealNodeError("the real node is not running")
        return self._kube_proxy

    @property
    def hosts_dir(self) -> pathlib.Path:
        """containerd's registry `config_path`: one `<host:port>/hosts.toml` per registry."""
        return self.layout.hosts_dir

    @property
    def toleration(self) -> dict[str, str]:
        return {"key": TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}

    @property
    def node_selector(self) -> dict[str, str]:
        return {NODE_LABEL_KEY: NODE_LABEL_VALUE}

    @property
    def placement(self) -> dict[str, Any]:
        """Fields to merge into a pod spec (or a chart's values) to run it here."""
        return {"nodeSelector": self.node_selector, "tolerations": [self.toleration]}

    def add_registry(
        self, registry: str, *, endpoint: str | None = None, plain_http: bool = True
    ) -> pathlib.Path:
        """Let the kubelet pull from `registry` (host:port), plain HTTP by default.

        `endpoint` (a URL) sends the pulls elsewhere, e.g. through a fault proxy that
        shapes bandwidth. containerd reads hosts.toml at each pull: no restart needed.
        """
        text = containerd.build_hosts_toml(registry, endpoint=endpoint, plain_http=plain_http)
        self._registries[registry] = text
        path = self.layout.hosts_dir / registry / "hosts.toml"
        if self._journal is not None:  # before start() only remembered: start writes them
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return path

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._journal is not None:
            raise RealNodeError("the real node is already running")
        started = time.monotonic()
        if os.geteuid() != 0:
            raise RealNodeError("a real node needs root (kubelet, containerd, iptables)")
        if not self.plane.advertise_address:
            raise RealNodeError(
                "the control plane listens on 127.0.0.1 only, which pods cannot reach: "
                "start it with advertise_address=controlplane.primary_address()"
            )
        self.node_ip = self.plane.advertise_address
        self._lock_fd = _acquire_lock(self.lock_path, timeout=self.lock_timeout)
        try:
            self._recover()
            self.before = take_host_snapshot(self.layout.base)
            self.layout.base.mkdir(parents=True, exist_ok=True)
            self._journal = Journal(node=self.name, bridge=BRIDGE, before=self.before)
            self._journal.write(self.layout.journal)
            atexit.register(self._stop_at_exit)
            self._prepare_cluster()
            self._write_files()
            self._start_containerd()
            self._start_kubelet()
            self._start_kube_proxy()
        except BaseException as failure:
            try:
                self.stop()
            except CleanupError as cleanup:
                raise cleanup from failure
            raise
        self.start_seconds = time.monotonic() - started
        logger.info("real node %s ready in %.1fs", self.name, self.start_seconds)

    def stop(self) -> None:
        """Delete the node's pods, stop its daemons and put the host back as it was.

        Raises CleanupError naming whatever could not be undone (the journal then stays,
        and the next start tries again). Idempotent.
        """
        journal = self._journal
        if journal is None:
            if self._lock_fd is not None:
                _release_lock(self.lock_path, self._lock_fd)
                self._lock_fd = None
            return
        started = time.monotonic()
        self._drain()
        for process in (self._kube_proxy, self._kubelet):
            if process is not None:
                process.stop()
        self._forget_node()
        left = teardown(self.layout, journal)
        if self._containerd is not None:
            self._containerd.stop()
        self._containerd = self._kubelet = self._kube_proxy = None
        self._journal = None
        with contextlib.suppress(ValueError):
            atexit.unregister(self._stop_at_exit)
        try:
            if left:
                raise CleanupError(left, self.layout.journal)
            finish_teardown(self.layout)
        finally:
            if self._lock_fd is not None:
                _release_lock(self.lock_path, self._lock_fd)
                self._lock_fd = None
            self.stop_seconds = time.monotonic() - started
        logger.info("real node %s stopped in %.1fs", self.name, self.stop_seconds)

    def _stop_at_exit(self) -> None:
        # A test run interrupted past its fixtures' finalizers must not leave the node.
        with contextlib.suppress(Exception):
            self.stop()

    # -- steps -------------------------------------------------------------------------------

    def _recover(self) -> None:
        """Clean up what a previous run that died without stop() left on the host."""
        self.recovered = False
        if self.layout.journal.exists():
            journal = Journal.read(self.layout.journal)
            logger.warning("cleaning up a previous real node run (journal %s)", self.layout.journal)
            left = teardown(self.layout, journal)
            if left:
                raise CleanupError(left, self.layout.journal)
            finish_teardown(self.layout)
            self.recovered = True
        elif self.layout.base.exists():
            # Died between creating the directory and writing the journal: nothing else
            # had been changed yet.
            shutil.rmtree(self.layout.base)
            self.recovered = True

    def _record(self, name: str, process: processes.ManagedProcess) -> None:
        assert self._journal is not None and process.pid is not None
        started = _process_start_time(process.pid)
        if started is not None:
            self._journal.processes[name] = [process.pid, started]
            self._journal.write(self.layout.journal)

    def _prepare_cluster(self) -> None:
        self.plane.apply(*build_rbac())
        # A node of the same name left by a run that died: its pods would be started again
        # by the new kubelet, so both go first.
        self.plane.kubectl("delete", "node", self.name, "--ignore-not-found", "--wait=false")
        self._force_delete_pods()

    def _write_files(self) -> None:
        layout = self.layout
        for directory in (
            layout.pki,
            layout.config,
            layout.hosts_dir,
            layout.cni_conf_dir,
            layout.cni_ipam_dir,
            layout.pod_logs,
            layout.kubelet_root,
        ):
            directory.mkdir(parents=True, exist_ok=True)
        ca = self.plane.ca
        (layout.pki / "ca.crt").write_bytes(ca.cert_pem)
        node = ca.issue(f"system:node:{self.name}", organizations=["system:nodes"], client=True)
        node.write(layout.pki, "kubelet-client")
        ca.issue(
            self.name,
            dns_names=[self.name, "localhost"],
            ip_addresses=[self.node_ip, "127.0.0.1"],
            server=True,
        ).write(layout.pki, "kubelet-serving")
        proxy = ca.issue("system:kube-proxy", client=True)  # bound to system:node-proxier
        server = self.plane.server
        for stem, pair, user in (
            ("kubelet", node, f"system:node:{self.name}"),
            ("kube-proxy", proxy, "system:kube-proxy"),
        ):
            path = layout.config / f"{stem}.kubeconfig"
            path.write_text(
                yaml.safe_dump(
                    build_kubeconfig(server, ca.cert_pem, pair.cert_pem, pair.key_pem, user)
                )
            )
            path.chmod(0o600)
        (layout.cni_conf_dir / "10-imageward.conflist").write_text(
            json.dumps(
                build_cni_config(bridge=BRIDGE, subnet=POD_CIDR, ipam_dir=layout.cni_ipam_dir)
            )
        )
        # What add_registry() was given, before this start or during a previous one.
        for registry, text in self._registries.items():
            (layout.hosts_dir / registry).mkdir(parents=True, exist_ok=True)
            (layout.hosts_dir / registry / "hosts.toml").write_text(text)

    def _start_containerd(self) -> None:
        layout = self.layout
        config = containerd.build_cri_config(
            root=layout.containerd / "root",
            state=layout.containerd / "state",
            socket=layout.socket,
            sandbox_image=self.pause_image,
            runc_root=layout.containerd / "runc",
            cni_bin_dir=_cni_bin_dir(),
            cni_conf_dir=layout.cni_conf_dir,
            hosts_dir=layout.hosts_dir,
            opt_dir=layout.containerd / "opt",
        )
        daemon = containerd.Containerd(
            workdir=layout.containerd, config=config, log_dir=self.log_dir, socket=layout.socket
        )
        self._containerd = daemon
        try:
            daemon.start()
        finally:
            if daemon.process is not None:
                self._record("containerd", daemon.process)
        archive = layout.base / "pause.tar"
        archive.write_bytes(
            build_oci_archive(
                build_pause_image(tools.find("imageward-pause").read_bytes()), self.pause_image
            )
        )
        try:
            daemon.ctr("images", "import", "--snapshotter", "overlayfs", str(archive))
        except containerd.ContainerdError as e:
            raise RealNodeError(f"the pause image did not import: {e}") from e
        archive.unlink()

    def _start_kubelet(self) -> None:
        layout = self.layout
        taints = [{"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}] if self.taint else []
        self.kubelet_port = processes.free_port()
        self.kubelet_healthz_port = processes.free_port()
        config = build_kubelet_config(
            node_ip=self.node_ip,
            port=self.kubelet_port,
            healthz_port=self.kubelet_healthz_port,
            client_ca=layout.pki / "ca.crt",
            tls_cert=layout.pki / "kubelet-serving.crt",
            tls_key=layout.pki / "kubelet-serving.key",
            runtime_socket=layout.socket,
            pod_logs_dir=layout.pod_logs,
            taints=taints,
        )
        (layout.config / "kubelet.yaml").write_text(yaml.safe_dump(config))
        process = processes.ManagedProcess(
            "kubelet",
            [
                str(tools.find("kubelet")),
                f"--config={layout.config / 'kubelet.yaml'}",
                f"--kubeconfig={layout.config / 'kubelet.kubeconfig'}",
                f"--root-dir={layout.kubelet_root}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.node_ip}",
                f"--node-labels={NODE_LABEL_KEY}={NODE_LABEL_VALUE}",
                "--v=1",
            ],
            log_dir=self.log_dir,
            grace=15.0,
        )
        self._kubelet = process
        process.start()
        self._record("kubelet", process)
        self._wait("node Ready", self._node_ready)

    def _start_kube_proxy(self) -> None:
        layout = self.layout
        healthz = processes.free_port()
        config = build_kube_proxy_config(
            kubeconfig=layout.config / "kube-proxy.kubeconfig",
            node_name=self.name,
            cluster_cidr=POD_CIDR,
            healthz_port=healthz,
            metrics_port=processes.free_port(),
        )
        (layout.config / "kube-proxy.yaml").write_text(yaml.safe_dump(config))
        process = processes.ManagedProcess(
            "kube-proxy",
            [
                str(tools.find("kube-proxy")),
                f"--config={layout.config / 'kube-proxy.yaml'}",
                "--v=1",
            ],
            log_dir=self.log_dir,
        )
        self._kube_proxy = process
        process.start()
        self._record("kube-proxy", process)
        self._wait("kube-proxy to program the kubernetes Service", self._service_programmed)

    # -- readiness ---------------------------------------------------------------------------

    def _daemons(self) -> Iterator[processes.ManagedProcess]:
        if self._containerd is not None and self._containerd.process is not None:
            yield self._containerd.process
        for process in (self._kubelet, self._kube_proxy):
            if process is not None:
                yield process

    def _wait(self, what: str, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            for process in self._daemons():
                if not process.alive:
                    raise RealNodeError(
                        f"{process.name} exited with {process.returncode} while waiting for "
                        f"{what}; log {process.log_path}:\n{process.log_tail()}"
                    )
            if check():
                return
            time.sleep(0.2)
        tails = "\n".join(
            f"--- {p.name} ({p.log_path}):\n{p.log_tail(2000)}" for p in self._daemons()
        )
        raise RealNodeError(
            f"timed out after {self.startup_timeout:.0f}s waiting for {what}\n{tails}"
        )

    def _node_ready(self) -> bool:
        result = self.plane.kubectl(
            "get",
            "node",
            self.name,
            "-o",
            'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
            check=False,
        )
        return result.returncode == 0 and result.stdout.strip() == "True"

    def _service_programmed(self) -> bool:
        result = subprocess.run(
            [str(tools.find("iptables")), "-t", "nat", "-S", "KUBE-SERVICES"],
            capture_output=True,
            text=True,
            check=False,
        )
        return "default/kubernetes:https" in result.stdout

    # -- stopping ----------------------------------------------------------------------------

    def _pods_here(self) -> list[tuple[str, str]]:
        result = self.plane.kubectl(
            "get",
            "pods",
            "-A",
            f"--field-selector=spec.nodeName={self.name}",
            "-o",
            "json",
            check=False,
        )
        if result.returncode != 0:
            return []
        return [
            (item["metadata"]["namespace"], item["metadata"]["name"])
            for item in json.loads(result.stdout)["items"]
        ]

    def _drain(self) -> None:
        """Let the kubelet stop the pods itself (CNI teardown, unmounts) while it runs."""
        if self._kubelet is None or not self._kubelet.alive:
            return
        with contextlib.suppress(controlplane.ControlPlaneError, subprocess.TimeoutExpired):
            # NoExecute keeps DaemonSets from putting their pods back meanwhile.
            self.plane.kubectl(
                "taint",
                "node",
                self.name,
                f"{TAINT_KEY}-stopping=true:NoExecute",
                "--overwrite",
                check=False,
            )
            pods = self._pods_here()
            for namespace in sorted({ns for ns, _ in pods}):
                names = [name for ns, name in pods if ns == namespace]
                self.plane.kubectl(
                    "delete",
                    "pod",
                    "-n",
                    namespace,
                    *names,
                    "--wait=false",
                    "--ignore-not-found",
                    check=False,
                )
            deadline = time.monotonic() + 30
            while self._pods_here() and time.monotonic() < deadline and self._kubelet.alive:
                time.sleep(0.2)

    def _force_delete_pods(self) -> None:
        pods = self._pods_here()
        for namespace in sorted({ns for ns, _ in pods}):
            names = [name for ns, name in pods if ns == namespace]
            self.plane.kubectl(
                "delete",
                "pod",
                "-n",
                namespace,
                *names,
                "--grace-period=0",
                "--force",
                "--ignore-not-found",
                check=False,
            )

    def _forget_node(self) -> None:
        # The kubelet is stopped: nobody finishes these pods' deletion, and a NotReady
        # node would linger for the kwok tests that run next.
        with contextlib.suppress(controlplane.ControlPlaneError, subprocess.TimeoutExpired):
            self._force_delete_pods()
            self.plane.kubectl(
                "delete", "node", self.name, "--ignore-not-found", "--wait=false", check=False
            )


def _cni_bin_dir() -> pathlib.Path:
    """Where Debian's containernetworking-plugins put the plugins."""
    for candidate in (pathlib.Path("/usr/lib/cni"), pathlib.Path("/opt/cni/bin")):
        if (candidate / "bridge").exists():
            return candidate
    raise tools.ToolMissingError("CNI plugins (bridge)", ["/usr/lib/cni", "/opt/cni/bin"])


# -- a real node for another process's control plane ----------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imageward.localcluster.realnode",
        description="Run a real kubelet node against a running local control plane until "
        "SIGINT/SIGTERM. Changes kernel settings, iptables and mounts (restored on stop); "
        "needs root.",
    )
    parser.add_argument(
        "--attach", required=True, type=pathlib.Path, help="the control plane's working directory"
    )
    parser.add_argument("--log-dir", type=pathlib.Path, default=None)
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=0.0,
        help="seconds to wait for another process's real node on this machine to stop",
    )
    parser.add_argument(
        "--registry",
        action="append",
        default=[],
        help="a plain-HTTP registry host:port the kubelet may pull from",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    plane = controlplane.ControlPlane.attach(args.attach)
    node = RealNode(plane, log_dir=args.log_dir, lock_timeout=args.lock_timeout)
    for registry in args.registry:
        node.add_registry(registry)
    stop = False

    def handler(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    node.start()
    print(f"real node {node.name} ready kubelet_pid={node.kubelet.pid}", flush=True)
    while not stop:
        time.sleep(0.2)
    node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
