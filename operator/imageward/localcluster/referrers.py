"""A registry that serves the OCI 1.1 referrers API (go-containerregistry's, built by
`make tools`), for the native referrers path that the distribution registry lacks."""

from __future__ import annotations

import pathlib
import shutil
import tempfile

from imageward.localcluster import images, processes, tools


class ReferrersRegistry:
    """In-memory, anonymous, plain HTTP; every request is logged (to count referrers calls)."""

    def __init__(self, *, workdir: pathlib.Path | None = None) -> None:
        self._own_workdir = workdir is None
        self.workdir = workdir or pathlib.Path(tempfile.mkdtemp(prefix="iw-referrers-"))
        self.port = processes.free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.process = processes.ManagedProcess(
            "referrers-registry",
            [str(tools.find("referrers-registry")), f"--address={self.host}"],
            log_dir=self.workdir,
        )

    def __enter__(self) -> ReferrersRegistry:
        self.process.start()
        try:
            processes.wait_for_http(
                f"http://{self.host}/v2/", timeout=10, expect_status=200, process=self.process
            )
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.process.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def client(self) -> images.RegistryClient:
        return images.RegistryClient(self.host)

    def request_log(self) -> str:
        return self.process.log_tail(1_000_000)
