"""A private containerd (root, state and socket of its own) and a `ctr` wrapper.

Runs as root beside anything else on the machine without touching /run/containerd or
/var/lib/containerd. By default the CRI plugin is off: the tests drive containerd through
its own API with `ctr`, and Layers mode's agent talks to the content store directly. The
real node (`realnode`) gives a configuration with CRI on (`build_cri_config`).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

from imageward.localcluster import processes, tools


class ContainerdError(RuntimeError):
    pass


# `ctr events` prints each event as Go's time.Time, namespace, topic and JSON body:
#   2026-12-02 12:40:01.123456789 +0000 UTC k8s.io /tasks/start {"container_id":"…","pid":7}
_EVENT_LINE = re.compile(
    r"^(?P<date>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:\.(?P<fraction>\d{1,9}))? "
    r"(?P<offset>[+-]\d{4}) \S+ (?P<namespace>\S+) (?P<topic>/\S+) (?P<body>.*)$"
)


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One containerd event: `time` in seconds since the epoch (nanoseconds kept as far as
    a float holds them), e.g. topic /tasks/start with body {"container_id", "pid"}."""

    time: float
    namespace: str
    topic: str
    body: dict[str, Any]


def parse_event_line(line: str) -> Event | None:
    """An event from one line of `ctr events`; None for anything else (a warning, a body
    that is not a JSON object)."""
    match = _EVENT_LINE.match(line.rstrip("\n"))
    if match is None:
        return None
    try:
        body = json.loads(match["body"])
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    stamp = datetime.datetime.strptime(f"{match['date']} {match['offset']}", "%Y-%m-%d %H:%M:%S %z")
    fraction = match["fraction"] or "0"
    seconds = stamp.timestamp() + int(fraction) / 10 ** len(fraction)
    return Event(seconds, match["namespace"], match["topic"], body)


class EventLog:
    """`ctr events` running in the background, its lines kept in a log file: what the
    daemon did and when by its own clock (e.g. when a container's task started, which the
    Kubernetes API only shows to the second)."""

    def __init__(self, socket: pathlib.Path, log_dir: pathlib.Path) -> None:
        self._process = processes.ManagedProcess(
            "containerd-events",
            [str(tools.find("ctr")), "--address", str(socket), "events"],
            log_dir=log_dir,
        )

    def __enter__(self) -> EventLog:
        self._process.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._process.stop()

    def events(self, topic: str | None = None) -> Iterator[Event]:
        """The events seen so far, oldest first (of `topic` only, if given)."""
        with open(self._process.log_path, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                event = parse_event_line(line)
                if event is not None and (topic is None or event.topic == topic):
                    yield event


_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  level = "info"
"""


# With CRI on, for a kubelet. Each setting says why in build_cri_config.
_CRI_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc_root}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin_dir}"
    conf_dir = "{cni_conf_dir}"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{hosts_dir}"
"""


def build_cri_config(
    *,
    root: pathlib.Path,
    state: pathlib.Path,
    socket: pathlib.Path,
    sandbox_image: str,
    runc_root: pathlib.Path,
    cni_bin_dir: pathlib.Path,
    cni_conf_dir: pathlib.Path,
    hosts_dir: pathlib.Path,
    opt_dir: pathlib.Path,
) -> str:
    """containerd 1.6 configuration with the CRI plugin on, everything in our own paths.

    - `restrict_oom_score_adj`: the project VMs lack CAP_SYS_RESOURCE, so the negative
      oom_score_adj CRI asks for is refused and *every* sandbox fails in runc with
      "can't get final child's PID from pipe: EOF" without it (facts.md).
    - `disable_apparmor`: no AppArmor in the VM kernel.
    - `netns_mounts_under_state_dir`: pod network namespaces are mounted under our state
      directory, not /var/run/netns, so cleanup knows where they are.
    - runc `Root` of our own and cgroupfs (no systemd on these machines).
    - `opt` plugin path: it would otherwise create /opt/containerd on the host.
    - `config_path`: one hosts.toml per registry (plain-HTTP loopback registries).
    - `sandbox_image`: built here and imported (nothing can be pulled from registry.k8s.io).
    """
    return _CRI_CONFIG.format(
        root=root,
        state=state,
        socket=socket,
        sandbox_image=sandbox_image,
        runc_root=runc_root,
        cni_bin_dir=cni_bin_dir,
        cni_conf_dir=cni_conf_dir,
        hosts_dir=hosts_dir,
        opt=opt_dir,
    )


def build_hosts_toml(registry: str, *, endpoint: str | None = None, plain_http: bool = True) -> str:
    """hosts.toml for `registry` (host[:port]): pull and resolve at `endpoint`.

    `endpoint` (a URL) defaults to the registry itself; give another one to send the node's
    pulls through a proxy or mirror (e.g. the harness's fault proxy, to shape bandwidth).
    """
    scheme = "http" if plain_http else "https"
    server = f"{scheme}://{registry}"
    host = endpoint or server
    return (
        f'server = "{server}"\n\n'
        f'[host."{host}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
        f"  skip_verify = {'true' if plain_http else 'false'}\n"
    )


class Containerd:
    def __init__(
        self,
        *,
        workdir: pathlib.Path | None = None,
        namespace: str = "k8s.io",
        config: str | None = None,
        log_dir: pathlib.Path | None = None,
        socket: pathlib.Path | None = None,
        binary: str = "containerd",
    ) -> None:
        """`config` replaces the default (CRI off) configuration; `socket` must then be the
        address it names. Logs go to `log_dir` (default: the working directory's logs/).
        `binary`: the tool to run (`containerd2`: the 2.x build of `make tools`, which reads
        this version 2 configuration too)."""
        self._own_workdir = workdir is None
        # Short path: a unix socket path is limited to 107 bytes.
        self.workdir = workdir or pathlib.Path(tempfile.mkdtemp(prefix="iw-ctrd-"))
        self.socket = socket or self.workdir / "containerd.sock"
        self.namespace = namespace
        self.config_text = config
        self.binary = binary
        self.log_dir = log_dir or self.workdir / "logs"
        self._process: processes.ManagedProcess | None = None

    @property
    def process(self) -> processes.ManagedProcess | None:
        return self._process

    def __enter__(self) -> Containerd:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        config = self.workdir / "config.toml"
        self.workdir.mkdir(parents=True, exist_ok=True)
        config.write_text(
            self.config_text
            or _CONFIG.format(
                root=self.workdir / "root", state=self.workdir / "state", socket=self.socket
            )
        )
        self._process = processes.ManagedProcess(
            "containerd",
            [str(tools.find(self.binary)), "--config", str(config)],
            log_dir=self.log_dir,
        )
        self._process.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not self._process.alive:
                raise ContainerdError(
                    f"containerd exited with {self._process.returncode} "
                    f"(log {self._process.log_path}):\n{self._process.log_tail()}"
                )
            if self.socket.exists() and self.ctr("version", check=False).returncode == 0:
                return
            time.sleep(0.1)
        log = self._process.log_path
        self.stop()
        raise ContainerdError(f"containerd did not answer on {self.socket} within 30s (log {log})")

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None
        if self._own_workdir:
            # Unpacked snapshots may be mounted; containerd unmounts on exit, but be sure.
            subprocess.run(
                ["umount", "-R", str(self.workdir / "root")], capture_output=True, check=False
            )
            shutil.rmtree(self.workdir, ignore_errors=True)

    def ctr(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(tools.find("ctr")), "--address", str(self.socket), "-n", self.namespace, *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise ContainerdError(
                f"ctr {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result

    def pull(
        self,
        image: str,
        *,
        plain_http: bool = True,
        user: str | None = None,
        platforms: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        args = ["images", "pull"]
        if plain_http:
            args.append("--plain-http")
        if user:
            args += ["--user", user]
        for platform in platforms:
            args += ["--platform", platform]
        return self.ctr(*args, image)

    def content_digests(self) -> set[str]:
        """Digests of every blob in the content store of this namespace."""
        output = self.ctr("content", "ls", "-q").stdout
        return {line.strip() for line in output.splitlines() if line.strip()}

    def snapshots(self, snapshotter: str = "overlayfs") -> dict[str, tuple[str, str]]:
        """`ctr snapshots ls` of this namespace as {key: (parent, kind)} ("" for no parent)."""
        rows = self.ctr("snapshots", "--snapshotter", snapshotter, "ls").stdout.splitlines()[1:]
        table = {}
        for row in rows:
            fields = row.split()
            if len(fields) == 3:
                table[fields[0]] = (fields[1], fields[2])
            elif len(fields) == 2:
                table[fields[0]] = ("", fields[1])
        return table
