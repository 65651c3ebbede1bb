"""The operator's side of an admission webhook in its own process (`admission.worker`).

`AdmissionProcess` starts the worker, waits until it serves (it loads every policy
first), restarts it if it dies, reads its metrics for the operator's `/metrics`, and
stops it with the operator: SIGTERM, so it drains as the in-process server would.

The worker's standard input is a pipe from here that nothing is written to: when this
process ends, however it ends, the pipe closes and the worker stops (no orphan keeps
the webhook port).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import os
import pathlib
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Sequence

logger = logging.getLogger(__name__)

#: Seconds the worker may take to load policies and listen (a cold start reads every
#: policy's key material; the apiserver may be slow right after a restart).
START_TIMEOUT = 100.0
#: Seconds between restarts of a worker that keeps dying, doubled up to the last.
RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
#: A worker that served this long before it died starts again without waiting.
STABLE_AFTER = 60.0
#: Seconds a metrics read from the worker may take (the scrape must answer anyway).
METRICS_TIMEOUT = 2.0
#: The worker's metrics text, at most: tens of KiB with many policies; it is parsed on the
#: operator's metrics thread, under the operator's GIL.
MAX_METRICS_BYTES = 2 * 1024 * 1024
#: Seconds the worker may be down (restarting, backing off) before the liveness probe
#: fails: longer than a cold start plus the longest backoff.
LIVENESS_GRACE = 90.0
#: Seconds beyond the drain the worker gets to exit on stop before it is killed.
STOP_GRACE = 10.0


class AdmissionProcessError(Exception):
    """The worker did not come up: says how it ended or what it waited for."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


def get_control(path: str, route: str, *, timeout: float) -> tuple[int, bytes]:
    """GET `route` over the worker's control socket (blocking: the metrics thread's)."""
    connection = _UnixConnection(path, timeout)
    try:
        connection.request("GET", route)
        response = connection.getresponse()
        return response.status, response.read(MAX_METRICS_BYTES + 1)
    finally:
        connection.close()


def _log_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("the admission process's supervisor ended: %r", task.exception())


class AdmissionProcess:
    """Same `start()`/`stop()` as `endpoints.Server`, so `main` holds either."""

    def __init__(
        self,
        *,
        certfile: pathlib.Path,
        keyfile: pathlib.Path,
        drain_seconds: float,
        verbose: bool = False,
        python: str = sys.executable,
    ) -> None:
        self.certfile = certfile
        self.keyfile = keyfile
        self.drain_seconds = drain_seconds
        self.verbose = verbose
        self.python = python
        self._directory = pathlib.Path(tempfile.mkdtemp(prefix="imageward-admission-"))
        os.chmod(self._directory, 0o700)
        self.control = str(self._directory / "control.sock")
        self.restarts = 0
        self._generation = 0  # one more for every worker started
        self._process: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._serving_since: float | None = None
        self._down_since: float | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def serving(self) -> bool:
        """The worker runs and answered its health check since it last started."""
        process = self._process
        return process is not None and process.returncode is None and bool(self._serving_since)

    def down_for(self) -> float:
        """Seconds since the worker last stopped serving (0 while it serves)."""
        if self.serving():
            self._down_since = None
            return 0.0
        if self._down_since is None:
            self._down_since = time.monotonic()
        return time.monotonic() - self._down_since

    def _command(self) -> Sequence[str]:
        command = [
            self.python,
            "-m",
            "imageward.admission.worker",
            "--certfile",
            str(self.certfile),
            "--keyfile",
            str(self.keyfile),
            "--control",
            self.control,
        ]
        return [*command, "--verbose"] if self.verbose else command

    async def _spawn(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.control)
        self._serving_since = None
        # Standard output and error are the operator's: its lines go to the same log.
        process = await asyncio.create_subprocess_exec(
            *self._command(), stdin=asyncio.subprocess.PIPE
        )
        self._process = process
        self._generation += 1
        try:
            await self._wait_serving(process)
        except BaseException:
            # Cancelled or timed out: a worker left running would hold the webhook port.
            if process.returncode is None:
                process.kill()
                await asyncio.shield(process.wait())
            raise

    async def _wait_serving(self, process: asyncio.subprocess.Process) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while process.returncode is None:
            if time.monotonic() > deadline:
                raise AdmissionProcessError(
                    f"the admission process (pid {process.pid}) did not serve within "
                    f"{START_TIMEOUT:.0f}s"
                )
            if await asyncio.to_thread(self._healthy):
                self._serving_since = time.monotonic()
                logger.info("admission process (pid %d) serves", process.pid)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 0.1)
        raise AdmissionProcessError(
            f"the admission process (pid {process.pid}) exited with code "
            f"{process.returncode} before it served (its log lines are above)"
        )

    def _healthy(self) -> bool:
        try:
            status, _ = get_control(self.control, "/healthz", timeout=1.0)
        except OSError:
            return False
        return status == 200

    async def start(self) -> None:
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise())
        self._supervisor.add_done_callback(_log_end)

    async def _supervise(self) -> None:
        failures = 0
        while True:
            process = self._process
            assert process is not None
            code = await process.wait()
            if self._stopping:
                return
            served = time.monotonic() - (self._serving_since or time.monotonic())
            failures = 0 if served >= STABLE_AFTER else failures + 1
            delay = RESTART_BACKOFF[min(failures, len(RESTART_BACKOFF)) - 1] if failures else 0.0
            logger.error(
                "the admission process (pid %d) exited with code %s; starting it again in %.1fs",
                process.pid,
                code,
                delay,
            )
            await asyncio.sleep(delay)
            try:
                await self._spawn()
                self.restarts += 1
            except asyncio.CancelledError:
                raise
            except AdmissionProcessError as e:
                logger.error("%s", e)
            except Exception as e:  # whatever it was, the next round tries again
                logger.exception("could not start the admission process again: %s", e)

    def metrics(self) -> tuple[int, str] | None:
        """(generation, the worker's OpenMetrics text), the generation counting its
        starts; None when it cannot answer now (restarting, busy): `metrics.Merged` then
        shows what it counted last."""
        if not self.serving():
            return None
        generation = self._generation
        try:
            status, body = get_control(self.control, "/metrics", timeout=METRICS_TIMEOUT)
        except (OSError, http.client.HTTPException) as e:
            logger.warning("could not read the admission process's metrics: %s", e)
            return None
        if status != 200 or len(body) > MAX_METRICS_BYTES:
            logger.warning(
                "the admission process's metrics were refused: HTTP %d, %d bytes", status, len(body)
            )
            return None
        return generation, body.decode("utf-8", "replace")

    async def stop(self) -> None:
        """SIGTERM (the worker drains for `drain_seconds`), killed if it takes too long."""
        self._stopping = True
        process = self._process
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), self.drain_seconds + STOP_GRACE)
            except TimeoutError:
                logger.error("the admission process (pid %d) did not stop; killed", process.pid)
                process.kill()
                await process.wait()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
        shutil.rmtree(self._directory, ignore_errors=True)
