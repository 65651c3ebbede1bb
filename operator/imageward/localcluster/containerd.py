"""A private containerd (root, state and socket of its own) and a `ctr` wrapper.

Runs as root beside anything else on the machine without touching /run/containerd or
/var/lib/containerd. The CRI plugin is off: the tests drive containerd through its own
API with `ctr`, and Layers mode's agent talks to the content store directly.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence

from imageward.localcluster import processes, tools


class ContainerdError(RuntimeError):
    pass


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


class Containerd:
    def __init__(self, *, workdir: pathlib.Path | None = None, namespace: str = "k8s.io") -> None:
        self._own_workdir = workdir is None
        # Short path: a unix socket path is limited to 107 bytes.
        self.workdir = workdir or pathlib.Path(tempfile.mkdtemp(prefix="iw-ctrd-"))
        self.socket = self.workdir / "containerd.sock"
        self.namespace = namespace
        self._process: processes.ManagedProcess | None = None

    def __enter__(self) -> Containerd:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        config = self.workdir / "config.toml"
        config.write_text(
            _CONFIG.format(
                root=self.workdir / "root", state=self.workdir / "state", socket=self.socket
            )
        )
        self._process = processes.ManagedProcess(
            "containerd",
            [str(tools.find("containerd")), "--config", str(config)],
            log_dir=self.workdir / "logs",
        )
        self._process.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not self._process.alive:
                raise ContainerdError(
                    f"containerd exited with {self._process.returncode}:\n"
                    f"{self._process.log_tail()}"
                )
            if self.socket.exists() and self.ctr("version", check=False).returncode == 0:
                return
            time.sleep(0.1)
        self.stop()
        raise ContainerdError("containerd did not answer on its socket within 30s")

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
