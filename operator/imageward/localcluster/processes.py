"""Small process helpers shared by the local cluster pieces: ports, readiness polls, children.

Every child runs in its own session (process group), so `ManagedProcess.stop()` takes the
whole group down, grandchildren included, and an `atexit` hook stops whatever a crashed
test forgot, so a test run never leaves daemons behind.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import os
import pathlib
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Mapping, Sequence
from types import TracebackType

#: A readiness probe: returns True once the component answers.
ReadyCheck = Callable[[], bool]

_POLL_FIRST = 0.02  # seconds; most local daemons answer within tens of milliseconds
_POLL_MAX = 0.25


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now.

    The port is released before the caller binds it, so another process may take it in
    between; callers that can detect "address already in use" retry with a new port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_status(
    url: str, *, timeout: float = 2.0, ssl_context: ssl.SSLContext | None = None
) -> int:
    """One GET; returns the status code, raises OSError/HTTPException when nothing answers."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(
            host, parts.port, timeout=timeout, context=ssl_context
        )
    elif parts.scheme == "http":
        connection = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    else:
        raise ValueError(f"not an http(s) URL: {url!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        connection.request("GET", path)
        with connection.getresponse() as response:
            response.read()
            return response.status
    finally:
        connection.close()


def wait_for_http(
    url: str,
    *,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
    expect_status: int | Collection[int] | None = None,
    process: ManagedProcess | None = None,
) -> int:
    """Poll `url` with GET until it answers; returns the status it answered with.

    Any HTTP answer counts when `expect_status` is None (a 401 proves a server is up).
    With `process`, give up at once when that process has exited, with its log tail.
    Raises TimeoutError naming the last failure.
    """
    wanted: Collection[int] | None
    wanted = (expect_status,) if isinstance(expect_status, int) else expect_status
    deadline = time.monotonic() + timeout
    delay = _POLL_FIRST
    last = "no attempt"
    while True:
        if process is not None and not process.alive:
            raise ProcessExitedError(process, f"while waiting for {url}")
        try:
            status = http_status(url, timeout=max(0.1, min(2.0, timeout)), ssl_context=ssl_context)
        except (OSError, http.client.HTTPException) as e:
            last = f"{type(e).__name__}: {e}"
        else:
            if wanted is None or status in wanted:
                return status
            last = f"HTTP {status}"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{url} not ready after {timeout:.1f}s (last: {last})")
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, _POLL_MAX)


class ProcessExitedError(RuntimeError):
    """A managed process exited when it should have kept running."""

    def __init__(self, process: ManagedProcess, context: str = "") -> None:
        self.process = process
        where = f" {context}" if context else ""
        super().__init__(
            f"{process.name} exited with {process.returncode}{where}; "
            f"log {process.log_path}:\n{process.log_tail()}"
        )


class ManagedProcess:
    """A child process whose stdout and stderr go to `<log_dir>/<name>.log`.

    `start()` spawns it (in a new session); `stop()` sends SIGTERM to its process group,
    SIGKILL after `grace` seconds, sweeps any group member still alive and reaps the child.
    `stop()` is idempotent and safe to call on a process that never started.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_dir: pathlib.Path,
        env: Mapping[str, str] | None = None,
        cwd: pathlib.Path | None = None,
        grace: float = 5.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_dir = log_dir
        self.log_path = log_dir / f"{name}.log"
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.grace = grace
        self._popen: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # stop() may race between a test and the atexit hook

    def __repr__(self) -> str:
        return f"<ManagedProcess {self.name} pid={self.pid} returncode={self.returncode}>"

    def __enter__(self) -> ManagedProcess:
        if self._popen is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has exited (negative: killed by that signal)."""
        if self._popen is None:
            return None
        return self._popen.poll()

    @property
    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def start(self) -> ManagedProcess:
        if self._popen is not None:
            raise RuntimeError(f"{self.name} was already started")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Append: a restarted component keeps the log of its previous life for diagnosis.
        with open(self.log_path, "ab") as log:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        _running.add(self)
        return self

    def stop(self) -> int | None:
        """Stop the process group and reap the child; returns its exit status."""
        with self._lock:
            popen = self._popen
            if popen is None:
                return None
            try:
                self._terminate_group(popen)
                return popen.returncode
            finally:
                _running.discard(self)

    def _terminate_group(self, popen: subprocess.Popen[bytes]) -> None:
        pgid = popen.pid  # start_new_session makes the child the leader of its own group
        if popen.returncode is None:
            _signal_group(pgid, signal.SIGTERM)
            if not _wait_exited(popen.pid, self.grace):
                _signal_group(pgid, signal.SIGKILL)
                _wait_exited(popen.pid, None)
        # Sweep helpers the leader spawned and did not stop. While the leader is an
        # unreaped zombie it holds the group id, so this cannot hit an unrelated group.
        _signal_group(pgid, signal.SIGKILL)
        # Signals land asynchronously: wait until the helpers are gone, so their ports and
        # files are free when stop() returns.
        _wait_group_dead(pgid, timeout=5.0)
        popen.wait()

    def log_tail(self, max_bytes: int = 4000) -> str:
        """The last `max_bytes` of the log, for error messages."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - max_bytes))
                return log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _live_group_members(pgid: int) -> list[int]:
    """Pids of processes in group `pgid` that are not zombies (Linux /proc)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        state, process_group = fields[0], int(fields[2])
        if process_group == pgid and state not in (b"Z", b"X"):
            members.append(int(entry.name))
    return members


def _wait_group_dead(pgid: int, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.002
    while _live_group_members(pgid) and time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _wait_exited(pid: int, timeout: float | None) -> bool:
    """Wait until child `pid` has exited, without reaping it (so its pid stays reserved)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            result = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True  # already reaped (by Popen.poll)
        if result is not None:
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


_running: set[ManagedProcess] = set()


@atexit.register
def _stop_leftovers() -> None:
    # A test that crashed between start() and stop() must not leave daemons running.
    for process in list(_running):
        process.stop()
