"""ManagedProcess leaves nothing behind; the readiness poll reports what it saw.

These spawn `sh`/`sleep` and a loopback HTTP server: local, fast, no cluster.
"""

from __future__ import annotations

import http.server
import os
import pathlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from imageward.localcluster import processes


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purpose.
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_free_port_is_bindable() -> None:
    port = processes.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_stop_kills_the_whole_group_and_is_idempotent(tmp_path: pathlib.Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    # The grandchild ignores nothing but is not the leader: only a group kill reaches it.
    script = f"sleep 60 & echo $! > {pid_file}; echo started; wait"
    process = processes.ManagedProcess("sh", ["sh", "-c", script], log_dir=tmp_path / "logs")

    process.start()
    deadline = time.monotonic() + 5
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    grandchild = int(pid_file.read_text())

    assert process.alive and pid_alive(grandchild)
    returncode = process.stop()
    assert returncode is not None and returncode < 0
    assert not process.alive and not pid_alive(grandchild)
    assert process.stop() == returncode
    assert "started" in process.log_tail()


def test_stop_escalates_to_sigkill_after_grace(tmp_path: pathlib.Path) -> None:
    process = processes.ManagedProcess(
        "stubborn",
        ["sh", "-c", "trap '' TERM; echo ready; while true; do sleep 0.05; done"],
        log_dir=tmp_path,
        grace=0.3,
    )
    with process:
        deadline = time.monotonic() + 5
        while "ready" not in process.log_tail():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        started = time.monotonic()
    assert process.returncode == -9
    assert 0.25 < time.monotonic() - started < 3


def test_stop_before_start_and_after_exit(tmp_path: pathlib.Path) -> None:
    never = processes.ManagedProcess("never", ["true"], log_dir=tmp_path)
    assert never.stop() is None and not never.alive

    quick = processes.ManagedProcess("quick", ["sh", "-c", "exit 3"], log_dir=tmp_path).start()
    deadline = time.monotonic() + 5
    while quick.alive:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert quick.stop() == 3
    with pytest.raises(RuntimeError):
        quick.start()


def test_log_appends_across_lives(tmp_path: pathlib.Path) -> None:
    for word in ("first", "second"):
        process = processes.ManagedProcess("echo", ["echo", word], log_dir=tmp_path).start()
        while process.alive:
            time.sleep(0.01)
        process.stop()
    assert (tmp_path / "echo.log").read_text() == "first\nsecond\n"


@pytest.fixture
def http_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(401 if self.path == "/auth" else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_wait_for_http(http_server: str) -> None:
    assert processes.wait_for_http(f"{http_server}/", timeout=2) == 200
    assert processes.wait_for_http(f"{http_server}/auth", timeout=2) == 401
    assert (
        processes.wait_for_http(f"{http_server}/auth", timeout=2, expect_status=(200, 401)) == 401
    )
    with pytest.raises(TimeoutError, match="HTTP 401"):
        processes.wait_for_http(f"{http_server}/auth", timeout=0.2, expect_status=200)


def test_wait_for_http_times_out_naming_the_error() -> None:
    url = f"http://127.0.0.1:{processes.free_port()}/"
    with pytest.raises(TimeoutError, match="ConnectionRefusedError"):
        processes.wait_for_http(url, timeout=0.2)


def test_wait_for_http_gives_up_when_the_process_dies(tmp_path: pathlib.Path) -> None:
    url = f"http://127.0.0.1:{processes.free_port()}/"
    with processes.ManagedProcess(
        "dies", ["sh", "-c", "echo boom; exit 1"], log_dir=tmp_path
    ) as process:
        started = time.monotonic()
        with pytest.raises(processes.ProcessExitedError, match="boom"):
            processes.wait_for_http(url, timeout=10, process=process)
        assert time.monotonic() - started < 5
