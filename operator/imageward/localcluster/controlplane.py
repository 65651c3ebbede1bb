"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok simulating nodes. Used by the test fixtures and by `imageward dev`.

Every binary is the real one, built by `make tools`. RBAC is on and ServiceAccount tokens
work, so the operator can run under its own ServiceAccount. `stop()` ends every process and
removes the working directory, also when called from a failing test.

Real kubelet nodes (`realnode`) join it too: the apiserver has a kubelet client
certificate (so `kubectl logs/exec` reach a kubelet that keeps anonymous access off), and
with `advertise_address` it listens on every address and the `kubernetes` Service points
at that address, which pods can reach (127.0.0.1 in a pod is the pod itself).
"""

from __future__ import annotations

import base64
import json
import logging
import pathlib
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from imageward.admission import pki
from imageward.localcluster import processes, tools

logger = logging.getLogger(__name__)

SERVICE_CIDR = "10.96.0.0/16"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
ADMIN_USER = "imageward-admin"
#: The identity the apiserver presents to kubelets (logs, exec, port-forward, proxy).
KUBELET_CLIENT_USER = "kube-apiserver-kubelet-client"
STAGES = pathlib.Path(__file__).with_name("kwok-stages.yaml")


class ControlPlaneError(RuntimeError):
    """A component did not come up; the message names it and the tail of its log."""


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok nodes.

    Use as a context manager, or call `start()` and `stop()`.
    """

    def __init__(
        self,
        *,
        nodes: int = 3,
        workdir: pathlib.Path | None = None,
        keep_workdir: bool = False,
        startup_timeout: float = 60.0,
        extra_args: Mapping[str, Sequence[str]] | None = None,
        audit_policy: Mapping[str, Any] | None = None,
        advertise_address: str | None = None,
        feature_gates: Mapping[str, bool] | None = None,
    ) -> None:
        """`extra_args`: more flags per component ("kube-apiserver",
        "kube-controller-manager", "kube-scheduler", "kwok"), e.g. a benchmark's client
        rate limits. `audit_policy`: an audit.k8s.io/v1 Policy; the apiserver then writes
        JSON audit events to `audit_log`. `advertise_address`: an address of this machine
        that pods can reach (see `primary_address()`); the apiserver then listens on all
        addresses and the `kubernetes` Service points there. None keeps everything on
        127.0.0.1 (kwok only). `feature_gates`: Kubernetes feature gates for the
        apiserver, controller-manager and scheduler (e.g. {"ImageVolume": True}); a real
        node needs the same for its kubelet."""
        self.node_count = nodes
        self.extra_args = {k: list(v) for k, v in (extra_args or {}).items()}
        self.audit_policy = dict(audit_policy) if audit_policy is not None else None
        self.advertise_address = advertise_address
        self.feature_gates = dict(feature_gates or {})
        self._own_workdir = workdir is None
        self.workdir = workdir or pathlib.Path(tempfile.mkdtemp(prefix="imageward-cluster-"))
        self.keep_workdir = keep_workdir
        self.startup_timeout = startup_timeout
        self.ca = pki.CertificateAuthority.create("imageward-cluster-ca")
        self.port = 0
        self._processes: list[processes.ManagedProcess] = []
        self.kubeconfig = self.workdir / "kubeconfig"
        self.audit_log = self.workdir / "audit.log"

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @classmethod
    def attach(cls, workdir: pathlib.Path) -> ControlPlane:
        """A handle on a control plane another process started in `workdir` (it owns the
        processes; this handle only talks to it), e.g. for a real node in another process."""
        facts = json.loads((workdir / "plane.json").read_text())
        plane = cls(
            nodes=0,
            workdir=workdir,
            keep_workdir=True,
            advertise_address=facts["advertise_address"],
            feature_gates=facts.get("feature_gates"),
        )
        pki_dir = workdir / "pki"
        plane.ca = pki.CertificateAuthority.load(
            (pki_dir / "ca.crt").read_bytes(), (pki_dir / "ca.key").read_bytes()
        )
        plane.port = facts["port"]
        return plane

    def start(self) -> None:
        started = time.monotonic()
        try:
            self._write_pki()
            self._start_etcd()
            self._start_apiserver()
            self._start_controllers()
            self.add_nodes(self.node_count)
            self._wait_for_default_service_account("default")
        except BaseException:
            self.stop()
            raise
        logger.info("control plane ready at %s in %.1fs", self.server, time.monotonic() - started)

    def stop(self) -> None:
        # Reverse order: controllers first, etcd last, so nothing logs a storm of errors.
        for process in reversed(self._processes):
            process.stop()
        self._processes.clear()
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- components --------------------------------------------------------------------------

    def _path(self, name: str) -> pathlib.Path:
        return self.workdir / name

    def _write_pki(self) -> None:
        pki_dir = self._path("pki")
        pki_dir.mkdir(parents=True, exist_ok=True)
        (pki_dir / "ca.crt").write_bytes(self.ca.cert_pem)
        # Kept (0600) so a real node started by another process can issue its certificates
        # (`attach`); this CA lives and dies with one throw-away cluster.
        (pki_dir / "ca.key").write_bytes(self.ca.key_pem)
        (pki_dir / "ca.key").chmod(0o600)
        addresses = ["127.0.0.1", "10.96.0.1"]
        if self.advertise_address and self.advertise_address not in addresses:
            addresses.append(self.advertise_address)
        self.ca.issue(
            "kube-apiserver",
            dns_names=[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            ip_addresses=addresses,
            server=True,
        ).write(pki_dir, "apiserver")
        self.ca.issue(KUBELET_CLIENT_USER, client=True).write(pki_dir, "apiserver-kubelet-client")
        self.ca.issue(ADMIN_USER, organizations=["system:masters"], client=True).write(
            pki_dir, "admin"
        )
        self.ca.issue("system:kube-controller-manager", client=True).write(
            pki_dir, "controller-manager"
        )
        self.ca.issue("system:kube-scheduler", client=True).write(pki_dir, "scheduler")
        pki.generate_service_account_keys().write(pki_dir, "sa")

    def process(self, name: str) -> processes.ManagedProcess:
        """The running component of that name (e.g. "kube-apiserver")."""
        for process in self._processes:
            if process.name == name:
                return process
        raise KeyError(name)

    def _start_process(self, name: str, argv: Sequence[str]) -> processes.ManagedProcess:
        argv = [*argv, *self.extra_args.get(name, ())]
        process = processes.ManagedProcess(name, list(argv), log_dir=self._path("logs"))
        self._processes.append(process)
        process.start()
        return process

    def _feature_gate_flags(self) -> list[str]:
        if not self.feature_gates:
            return []
        return [f"--feature-gates={build_feature_gates(self.feature_gates)}"]

    def _start_etcd(self) -> None:
        client_port, peer_port = processes.free_port(), processes.free_port()
        self.etcd_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        process = self._start_process(
            "etcd",
            [
                str(tools.find("etcd")),
                "--name=imageward",
                f"--data-dir={self._path('etcd')}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=imageward={peer_url}",
                "--unsafe-no-fsync",  # a throw-away cluster: durability buys nothing here
                "--log-level=warn",
            ],
        )
        self._wait("etcd", process, lambda: _http_ok(f"{self.etcd_url}/health"))

    def _audit_args(self) -> list[str]:
        if self.audit_policy is None:
            return []
        policy = self._path("audit-policy.yaml")
        policy.write_text(yaml.safe_dump(self.audit_policy))
        return [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-mode=batch",
            "--audit-log-batch-max-wait=1s",
        ]

    def _start_apiserver(self) -> None:
        self.port = processes.free_port()
        pki_dir = self._path("pki")
        (self._path("plane.json")).write_text(
            json.dumps(
                {
                    "port": self.port,
                    "advertise_address": self.advertise_address,
                    "feature_gates": self.feature_gates,
                }
            )
        )
        # Pods reach the apiserver at the advertised address (through the `kubernetes`
        # Service and kube-proxy), host processes at 127.0.0.1: listen on both.
        bind = "0.0.0.0" if self.advertise_address else "127.0.0.1"
        process = self._start_process(
            "kube-apiserver",
            [
                str(tools.find("kube-apiserver")),
                f"--etcd-servers={self.etcd_url}",
                f"--cert-dir={pki_dir}",
                f"--tls-cert-file={pki_dir / 'apiserver.crt'}",
                f"--tls-private-key-file={pki_dir / 'apiserver.key'}",
                f"--client-ca-file={pki_dir / 'ca.crt'}",
                f"--secure-port={self.port}",
                f"--bind-address={bind}",
                f"--advertise-address={self.advertise_address or '127.0.0.1'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki_dir / 'sa.crt'}",
                f"--service-account-signing-key-file={pki_dir / 'sa.key'}",
                "--kubelet-preferred-address-types=InternalIP",
                # logs/exec on real kubelets, whose webhook authn/authz stay on (kwok's
                # server ignores the certificate). Kubelet serving certificates are not
                # verified (no --kubelet-certificate-authority): kwok's are self-signed.
                f"--kubelet-client-certificate={pki_dir / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki_dir / 'apiserver-kubelet-client.key'}",
                # Webhook Services are called at their pod endpoints: no ClusterIP routing
                # (kube-proxy) is needed on the apiserver's side for admission.
                "--enable-aggregator-routing=true",
                "--profiling=false",
                *self._feature_gate_flags(),
                "--v=1",
                *self._audit_args(),
            ],
        )
        self._write_kubeconfig(self.kubeconfig, "admin")
        self._write_kubeconfig(self._path("controller-manager.kubeconfig"), "controller-manager")
        self._write_kubeconfig(self._path("scheduler.kubeconfig"), "scheduler")
        context = self.ssl_context()
        self._wait(
            "kube-apiserver",
            process,
            lambda: _http_ok(f"{self.server}/readyz", context=context),
        )

    def _start_controllers(self) -> None:
        pki_dir = self._path("pki")
        self._start_process(
            "kube-controller-manager",
            [
                str(tools.find("kube-controller-manager")),
                f"--kubeconfig={self._path('controller-manager.kubeconfig')}",
                f"--authentication-kubeconfig={self._path('controller-manager.kubeconfig')}",
                f"--authorization-kubeconfig={self._path('controller-manager.kubeconfig')}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--root-ca-file={pki_dir / 'ca.crt'}",
                f"--service-account-private-key-file={pki_dir / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--bind-address=127.0.0.1",
                f"--secure-port={processes.free_port()}",
                # Cloud and IPAM controllers have nothing to do without a cloud or CNI.
                "--controllers=*,-cloud-node-lifecycle,-nodeipam,-route,-service",
                "--concurrent-daemonset-syncs=4",
                *self._feature_gate_flags(),
                "--v=1",
            ],
        )
        self._start_process(
            "kube-scheduler",
            [
                str(tools.find("kube-scheduler")),
                f"--kubeconfig={self._path('scheduler.kubeconfig')}",
                f"--authentication-kubeconfig={self._path('scheduler.kubeconfig')}",
                f"--authorization-kubeconfig={self._path('scheduler.kubeconfig')}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={processes.free_port()}",
                *self._feature_gate_flags(),
                "--v=1",
            ],
        )
        self._start_process(
            "kwok",
            [
                str(tools.find("kwok")),
                f"--kubeconfig={self.kubeconfig}",
                f"--config={STAGES}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                "--server-address=127.0.0.1:0",
                "--node-lease-duration-seconds=40",
                "--v=info",
            ],
        )

    def _wait_for_default_service_account(self, namespace: str) -> None:
        # The ServiceAccount controller (in kube-controller-manager) creates it: its
        # arrival proves the controllers talk to the apiserver with working credentials.
        self.wait_for(
            f"ServiceAccount {namespace}/default",
            lambda: (
                self.kubectl(
                    "get", "serviceaccount", "default", "-n", namespace, check=False
                ).returncode
                == 0
            ),
        )

    # -- helpers ---------------------------------------------------------------------------

    def _wait(self, name: str, process: processes.ManagedProcess, check: Any) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if not process.alive:
                raise ControlPlaneError(
                    f"{name} exited with {process.returncode}; log tail:\n{process.log_tail()}"
                )
            if check():
                return
            time.sleep(0.1)
        raise ControlPlaneError(
            f"{name} not ready after {self.startup_timeout:.0f}s; log tail:\n{process.log_tail()}"
        )

    def wait_for(self, what: str, check: Any, *, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        while time.monotonic() < deadline:
            for process in self._processes:
                if not process.alive:
                    raise ControlPlaneError(
                        f"{process.name} exited with {process.returncode} while waiting for "
                        f"{what}; log tail:\n{process.log_tail()}"
                    )
            if check():
                return
            time.sleep(0.2)
        raise ControlPlaneError(f"timed out waiting for {what}")

    def ssl_context(self) -> ssl.SSLContext:
        """A TLS context that trusts the cluster CA and presents the admin certificate."""
        pki_dir = self._path("pki")
        context = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
        context.load_cert_chain(str(pki_dir / "admin.crt"), str(pki_dir / "admin.key"))
        return context

    def _write_kubeconfig(self, path: pathlib.Path, identity: str) -> None:
        pki_dir = self._path("pki")

        def b64(name: str) -> str:
            return base64.b64encode((pki_dir / name).read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "imageward",
                    "cluster": {"server": self.server, "certificate-authority-data": b64("ca.crt")},
                }
            ],
            "users": [
                {
                    "name": identity,
                    "user": {
                        "client-certificate-data": b64(f"{identity}.crt"),
                        "client-key-data": b64(f"{identity}.key"),
                    },
                }
            ],
            "contexts": [
                {"name": "imageward", "context": {"cluster": "imageward", "user": identity}}
            ],
            "current-context": "imageward",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)

    def write_token_kubeconfig(self, path: pathlib.Path, token: str, user: str) -> None:
        """A kubeconfig that authenticates with a bearer token (e.g. a ServiceAccount's)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "imageward",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": base64.b64encode(self.ca.cert_pem).decode(),
                    },
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "imageward", "context": {"cluster": "imageward", "user": user}}],
            "current-context": "imageward",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: pathlib.Path | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(tools.find("kubectl")), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        result = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise ControlPlaneError(
                f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result

    def apply(self, *objects: dict[str, Any]) -> None:
        self.kubectl(
            "apply",
            "--server-side",
            "--field-manager=imageward-tests",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}),
        )

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def add_nodes(
        self, count: int, *, prefix: str = "kwok-node-", start: int | None = None
    ) -> list[str]:
        """Create `count` kwok-managed nodes and wait until all are Ready."""
        if count <= 0:
            return []
        existing = self.get_json("nodes")["items"]
        first = len(existing) if start is None else start
        names = [f"{prefix}{i}" for i in range(first, first + count)]
        # In batches: one apply of 700 nodes outlasts kubectl's 60 s on a loaded machine.
        for batch in range(0, len(names), _NODE_BATCH):
            self.apply(*(build_kwok_node(name) for name in names[batch : batch + _NODE_BATCH]))

        def all_ready() -> bool:
            items = self.get_json("nodes")["items"]
            ready = {
                item["metadata"]["name"]
                for item in items
                if any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in item.get("status", {}).get("conditions", [])
                )
            }
            return set(names) <= ready

        self.wait_for(f"{count} kwok node(s) Ready", all_ready)
        return names

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": labels or {}},
            }
        )
        self._wait_for_default_service_account(name)

    def service_account_token(self, namespace: str, name: str, *, seconds: int = 3600) -> str:
        result = self.kubectl("create", "token", name, "-n", namespace, f"--duration={seconds}s")
        return result.stdout.strip()


def build_feature_gates(gates: Mapping[str, bool]) -> str:
    """`--feature-gates` text: `A=true,B=false`, sorted."""
    return ",".join(f"{name}={'true' if on else 'false'}" for name, on in sorted(gates.items()))


_NODE_BATCH = 100  # nodes per apply in add_nodes


def build_kwok_node(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "spec": {},
        "status": {
            "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
        },
    }


def primary_address() -> str | None:
    """This machine's IPv4 address towards its default route (what pods can reach), or None.

    Connecting a UDP socket sends nothing; it only makes the kernel pick the source address.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("203.0.113.1", 9))  # TEST-NET-3: never routed anywhere real
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def _http_ok(url: str, *, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
