"""A reverse proxy in front of a real registry that misbehaves on request (test tooling).

Real registries fail in ways a test cannot provoke from a healthy local registry: slow
links, 429 with Retry-After, 5xx, huge or altered manifests, wrong content types, bodies
that trickle, connections that drop, redirects to blob storage. `FaultProxy` forwards
everything to the upstream registry (headers, auth challenges and all) and applies the
first matching `Fault` to a request. It counts requests per path, so tests can assert
how many reached the registry.

It runs its own event loop in a thread, so synchronous code and async tests can use it
alike. `ProxyProcess` runs one in a child process instead (`python -m
imageward.localcluster.faultproxy UPSTREAM --latency S`), for benchmarks, where the
proxy's own work must not compete with the client for the interpreter; it answers
`GET /_faultproxy/count`, `GET /_faultproxy/seen`, `GET /_faultproxy/sent` and
`POST /_faultproxy/reset` itself.

`rate` (bytes per second, `--rate`) makes the proxy a slow link: every answer's body is
paced through one budget shared by all connections, as a 100 Mbit/s uplink would. The
proxy also counts the body bytes it sent per request (`sent_bytes()`), so benchmarks can
say how many bytes a pull fetched from the registry.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import aiohttp
import multidict
from aiohttp import web

# Hop-by-hop headers (RFC 9110 7.6.1) and the ones aiohttp recomputes for the new body.
_DROP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
        "content-length",
        "content-encoding",
        "host",
    }
)


CONTROL_PREFIX = "/_faultproxy/"


@dataclasses.dataclass(frozen=True, slots=True)
class Fault:
    """What to do to requests whose path matches `path` (a regex, searched).

    Answering faults (no request reaches the registry): `status` (with `headers` and
    `body`), `redirect` (307 to that base URL + the same path), `hang`, `drop`.
    Altering faults (the registry answers, the proxy changes it): `content_type`,
    `tamper` (flip the body's last byte, keep the headers), `oversize` (pad the body to
    that many bytes), `trickle` ((bytes, seconds): send the body that slowly), `latency`.
    `times`: how many requests it applies to (None: all).
    """

    path: str
    method: str | None = None
    times: int | None = None
    latency: float = 0.0
    status: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    redirect: str | None = None
    hang: bool = False
    drop: bool = False
    content_type: str | None = None
    tamper: bool = False
    oversize: int | None = None
    trickle: tuple[int, float] | None = None
    chunked: bool = False
    """Send the altered body without Content-Length (so only streaming caps can stop it)."""

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        return re.search(self.path, path) is not None


@dataclasses.dataclass(frozen=True, slots=True)
class Seen:
    """One request the proxy received."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


class FaultProxy:
    """`with FaultProxy("http://127.0.0.1:5000") as proxy:` then use `proxy.host`."""

    def __init__(
        self,
        upstream: str,
        *,
        latency: float = 0.0,
        rate: float | None = None,
        bind: str = "127.0.0.1",
    ) -> None:
        """`bind`: the address it listens on; the node's address (not 127.0.0.1) lets
        pods of a real node reach it, e.g. as a registry mirror of the node agent."""
        self.upstream = upstream.rstrip("/")
        self.latency = latency
        self.rate = rate
        self.bind = bind
        self._sent: list[tuple[str, str, int]] = []  # (method, path, body bytes)
        self._pace_free_at = 0.0
        self.host = ""
        self._faults: list[list[object]] = []  # [fault, remaining]
        self._seen: list[Seen] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- lifecycle ------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def port(self) -> int:
        return int(self.host.rsplit(":", 1)[1])

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise RuntimeError(f"fault proxy did not start: {self._error}") from self._error
        if not self.host:
            raise RuntimeError("fault proxy did not start within 10s")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._start())
        except BaseException as e:  # reported to start() in the caller's thread
            self._error = e
            loop.run_until_complete(self._cleanup())
            loop.close()
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._cleanup())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=60), auto_decompress=False
        )
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # A short shutdown: handlers told to hang must not hold stop() for a minute.
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=0.2
        )
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.bind, 0))
        site = web.SockSite(self._runner, sock)
        await site.start()
        self.host = f"{self.bind}:{sock.getsockname()[1]}"

    async def _cleanup(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        # Handlers told to hang are still asleep: end them before the loop closes.
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(15)
        self._loop = self._thread = None

    # -- faults and counts ----------------------------------------------------------

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append([fault, fault.times])
        return fault

    def clear(self) -> None:
        """Remove every fault and forget what was seen."""
        with self._lock:
            self._faults.clear()
            self._seen.clear()
            self._sent.clear()

    def reset_counts(self) -> None:
        with self._lock:
            self._seen.clear()
            self._sent.clear()

    @property
    def sent(self) -> list[tuple[str, str, int]]:
        """(method, path, body bytes) of every answer sent since the last reset."""
        with self._lock:
            return list(self._sent)

    def sent_bytes(self, path: str | None = None) -> int:
        """Body bytes sent in answers to requests whose path matches `path` (None: all)."""
        return sum(n for _m, p, n in self.sent if path is None or re.search(path, p))

    async def _pace(self, size: int) -> None:
        """Wait until `size` more bytes fit the shared rate (a link's serialisation time)."""
        if not self.rate:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._pace_free_at = max(self._pace_free_at, now) + size / self.rate
        delay = self._pace_free_at - now
        if delay > 0.0005:
            await asyncio.sleep(delay)

    @property
    def seen(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)

    def count(self, path: str | None = None, *, method: str | None = None) -> int:
        """Requests received whose path matches `path` (a regex; None: all)."""
        return sum(
            1
            for item in self.seen
            if (path is None or re.search(path, item.path))
            and (method is None or item.method == method)
        )

    def counts(self) -> Mapping[tuple[str, str], int]:
        return collections.Counter((item.method, item.path) for item in self.seen)

    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for entry in self._faults:
                fault, remaining = entry
                assert isinstance(fault, Fault)
                if remaining == 0 or not fault.matches(method, path):
                    continue
                if isinstance(remaining, int):
                    entry[1] = remaining - 1
                return fault
        return None

    # -- the proxy ------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith(CONTROL_PREFIX):
            return self._control(request)
        with self._lock:
            self._seen.append(
                Seen(
                    request.method,
                    request.path,
                    request.query_string,
                    tuple(request.headers.items()),
                )
            )
        fault = self._take(request.method, request.path)
        delay = self.latency + (fault.latency if fault else 0.0)
        if delay:
            await asyncio.sleep(delay)
        if fault is not None:
            answer = await self._answer(request, fault)
            if answer is not None:
                return answer
        assert self._session is not None
        # A multidict: clients send several Accept headers, and each one counts.
        headers = multidict.CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in _DROP_HEADERS
        )
        target = self.upstream + request.path_qs
        async with self._session.request(
            request.method,
            target,
            headers=headers,
            data=await request.read() if request.can_read_body else None,
            allow_redirects=False,
        ) as upstream:
            body = await upstream.read()
            status = upstream.status
            upstream_length = upstream.headers.get("Content-Length", "")
            out_headers = multidict.CIMultiDict(
                (k, v) for k, v in upstream.headers.items() if k.lower() not in _DROP_HEADERS
            )
        if fault is not None:
            body = self._alter(fault, body, out_headers)
        if request.method != "HEAD":
            with self._lock:
                self._sent.append((request.method, request.path, len(body)))
        if fault is not None and (fault.trickle or fault.chunked):
            return await self._stream(request, fault, status, out_headers, body)
        if request.method == "HEAD":
            # A HEAD answer's Content-Length is the size of the body a GET would get;
            # registries send it, and clients (go-containerregistry) require it.
            length = upstream_length if upstream_length.isdigit() else None
            if length is None:
                return web.Response(status=status, headers=out_headers)
            head = web.StreamResponse(status=status, headers=out_headers)
            head.content_length = int(length)
            await head.prepare(request)
            await head.write_eof()
            return head
        if self.rate:
            return await self._paced(request, status, out_headers, body)
        return web.Response(status=status, headers=out_headers, body=body)

    async def _paced(
        self,
        request: web.Request,
        status: int,
        headers: multidict.CIMultiDict[str],
        body: bytes,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        chunk = 64 * 1024
        try:
            for start in range(0, len(body), chunk):
                piece = body[start : start + chunk]
                await self._pace(len(piece))
                await response.write(piece)
            await response.write_eof()
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            pass  # the client went away mid-body
        return response

    def _control(self, request: web.Request) -> web.Response:
        if request.path == CONTROL_PREFIX + "count":
            return web.json_response({"count": self.count()})
        if request.path == CONTROL_PREFIX + "seen":
            seen = [[item.method, item.path, item.query] for item in self.seen]
            return web.json_response({"seen": seen})
        if request.path == CONTROL_PREFIX + "sent":
            return web.json_response({"sent": [list(item) for item in self.sent]})
        if request.path == CONTROL_PREFIX + "reset" and request.method == "POST":
            self.reset_counts()
            return web.json_response({})
        return web.json_response({"error": "unknown control path"}, status=404)

    async def _answer(self, request: web.Request, fault: Fault) -> web.StreamResponse | None:
        if fault.hang:
            await asyncio.sleep(3600)
        if fault.drop:
            transport = request.transport
            if transport is not None:
                transport.abort()
            raise asyncio.CancelledError
        if fault.redirect is not None:
            location = fault.redirect.rstrip("/") + request.path_qs
            return web.Response(status=307, headers={"Location": location, **dict(fault.headers)})
        if fault.status is not None:
            return web.Response(status=fault.status, headers=dict(fault.headers), body=fault.body)
        return None

    def _alter(self, fault: Fault, body: bytes, headers: multidict.CIMultiDict[str]) -> bytes:
        if fault.content_type is not None:
            headers["Content-Type"] = fault.content_type
        if fault.tamper and body:
            body = body[:-1] + bytes([body[-1] ^ 0x01])
        if fault.oversize is not None and len(body) < fault.oversize:
            # Whitespace padding keeps it valid JSON: only the size is wrong.
            body = body + b" " * (fault.oversize - len(body))
        for key, value in fault.headers:
            headers[key] = value
        return body

    async def _stream(
        self,
        request: web.Request,
        fault: Fault,
        status: int,
        headers: multidict.CIMultiDict[str],
        body: bytes,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers=headers)
        if fault.chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = len(body)
        await response.prepare(request)
        try:
            if fault.trickle:
                size, interval = fault.trickle
                for start in range(0, len(body), max(1, size)):
                    await response.write(body[start : start + size])
                    await asyncio.sleep(interval)
            else:
                await response.write(body)
            await response.write_eof()
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            pass  # the client gave up on the trickle: that is the point of it
        return response


class ProxyProcess:
    """A latency-only (or rate-limited) FaultProxy in a child process; `count()` asks it
    over HTTP."""

    def __init__(
        self,
        upstream: str,
        *,
        latency: float = 0.0,
        rate: float | None = None,
        bind: str = "127.0.0.1",
    ) -> None:
        self.upstream = upstream
        self.latency = latency
        self.rate = rate
        self.bind = bind
        self.host = ""
        self._process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def __enter__(self) -> ProxyProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> ProxyProcess:
        argv = [sys.executable, "-m", __name__, self.upstream, "--latency", str(self.latency)]
        if self.rate:
            argv += ["--rate", str(self.rate)]
        if self.bind != "127.0.0.1":
            argv += ["--bind", self.bind]
        self._process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"fault proxy process did not start: {line!r}")
        self.host = line.removeprefix("listening on ")
        return self

    def _call(self, method: str, name: str) -> dict[str, Any]:
        request = urllib.request.Request(f"{self.url}{CONTROL_PREFIX}{name}", method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result

    def count(self) -> int:
        return int(self._call("GET", "count")["count"])

    def reset_counts(self) -> None:
        self._call("POST", "reset")

    def seen(self) -> list[tuple[str, str, str]]:
        """(method, path, query) of every request since the last reset."""
        return [(m, p, q) for m, p, q in self._call("GET", "seen")["seen"]]

    def sent(self) -> list[tuple[str, str, int]]:
        """(method, path, body bytes) of every answer since the last reset."""
        return [(m, p, int(n)) for m, p, n in self._call("GET", "sent")["sent"]]

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdout is not None:
            process.stdout.close()
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a latency-adding registry proxy")
    parser.add_argument("upstream", help="base URL of the registry, e.g. http://127.0.0.1:5000")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    parser.add_argument(
        "--rate", type=float, default=None, help="bytes per second of all answers' bodies together"
    )
    parser.add_argument("--bind", default="127.0.0.1", help="the address to listen on")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with FaultProxy(args.upstream, latency=args.latency, rate=args.rate, bind=args.bind) as proxy:
        print(f"listening on {proxy.host}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
