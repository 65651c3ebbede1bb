"""The HTTPS server the apiserver calls: `/imageward-validate` and `/imageward-pin-digest`.

Served directly rather than through Kopf's generic admission machinery (which cost a
third of a warm review's CPU), and on asyncio's TLS transport with the strict HTTP/1.1
reader of `http11` rather than aiohttp's server (whose request, router and response
objects cost more CPU than a warm review's decision): the body checked by
`reviews.parse_review` (anything malformed is a 400 naming the field, never a 500),
the decision from `handler`, the AdmissionReview response written here. Kopf still
runs the controllers in the same process; peering pauses those, never this server, so
a standby replica keeps admitting with current policies.

On stop it drains first (`Server.drain_seconds`): it keeps answering a few seconds, each
connection closed after its next answer, so the apiserver moves to the other replicas
without a review cut in flight.

The serving certificate is reloaded when its files change (renewal by the operator or
by cert-manager): new connections get the new one, open ones finish with the old.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import pathlib
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from imageward import errors, runtime, settings
from imageward.admission import handler, http11, reviews, webhooks

logger = logging.getLogger(__name__)

#: The apiserver sends the whole object (and the old one): a few hundred KiB at most.
MAX_BODY_BYTES = 8 * 1024 * 1024
CERT_CHECK_INTERVAL = 5.0  # seconds between looks at the certificate files
#: Seconds a kept-alive connection may sit idle (Go's client keeps them 90 s; aiohttp
#: closed them after 75), and a started request may take to arrive in full.
KEEPALIVE_TIMEOUT = 75.0
REQUEST_TIMEOUT = 30.0
#: Seconds `stop()` waits for reviews in flight once it stops listening.
SHUTDOWN_TIMEOUT = 10.0
BACKLOG = 1024
#: Connections open at once (TLS handshakes included); the apiserver keeps a few dozen.
MAX_CONNECTIONS = 512
#: Seconds a client may take over its TLS handshake (asyncio's default is 60).
HANDSHAKE_TIMEOUT = 10.0
#: Request-body bytes being parsed and decided at once (a parsed body takes up to ~25x
#: its size): a request over the budget waits for the reviews in flight.
BODY_BUDGET = 4 * MAX_BODY_BYTES

Decide = Callable[[runtime.Runtime, reviews.AdmissionRequest], Awaitable[handler.Answer]]

ROUTES: dict[str, Decide] = {
    f"/{webhooks.VALIDATE_ID}": handler.validate,
    f"/{webhooks.PIN_DIGEST_ID}": handler.pin,
}
HEALTH_PATH = "/healthz"


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    allow: str | None = None  # the Allow header of a 405


async def respond(state: runtime.Runtime, request: http11.Request) -> Reply:
    """The answer to one request: a review's AdmissionReview response; 400 naming what
    is malformed (never a 500 for bad input); 404 and 405 for what is not served."""
    decide = ROUTES.get(request.path)
    if decide is None:
        if request.path != HEALTH_PATH:
            return _error(404, f"nothing is served at {request.path[:200]}")
        if request.method != "GET":
            return Reply(405, b"", allow="GET")
        return Reply(200, b"ok", "text/plain; charset=utf-8")
    if request.method != "POST":
        return Reply(405, b"", allow="POST")
    try:
        body: Any = json.loads(request.body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        return _error(400, f"body is not JSON: {e}")
    try:
        review = reviews.parse_review(body)
    except errors.MalformedReviewError as e:
        return _error(400, str(e))
    answer = await decide(state, review)
    if answer is handler.ALLOW:
        # Most answers, written without building and encoding the response's dicts.
        return Reply(200, _ALLOWED[body["apiVersion"]] + json.dumps(review["uid"]).encode() + b"}}")
    response = {
        "apiVersion": body["apiVersion"],
        "kind": "AdmissionReview",
        "response": answer.to_response(review["uid"]),
    }
    return Reply(200, json.dumps(response, separators=(",", ":")).encode())


#: The AdmissionReview of an admission without warnings or patch, up to its uid, per
#: apiVersion (`respond` appends the uid and the closing braces).
_ALLOWED = {
    version: json.dumps(
        {"apiVersion": version, "kind": "AdmissionReview", "response": {"allowed": True}},
        separators=(",", ":"),
    )
    .encode()
    .removesuffix(b"}}")
    + b',"uid":'
    for version in reviews.API_VERSIONS
}


def _error(status: int, message: str) -> Reply:
    return Reply(status, json.dumps({"error": message}).encode())


class _Connection(asyncio.Protocol):
    """One client connection: its requests one after the other (a pipelined request
    waits for the answer before it), each answer written as soon as it is decided."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.reader = http11.RequestReader(MAX_BODY_BYTES)
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.last_active = time.monotonic()
        self.request_started = self.last_active
        self.paused = False
        self.writing_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if len(self.server.connections) >= MAX_CONNECTIONS and not self.server.make_room():
            logger.warning(
                "refused a webhook connection: %d open, none idle (cap %d)",
                len(self.server.connections),
                MAX_CONNECTIONS,
            )
            self.transport.abort()
            self.transport = None
            return
        self.server.connections.add(self)
        # pause_writing() at 64 KiB of unsent answers (the TLS transport's default is 512)
        self.transport.set_write_buffer_limits(high=64 * 1024)

    def connection_lost(self, exc: Exception | None) -> None:
        # A review in flight finishes (it may share registry look-ups with others);
        # its answer has nowhere to go and is dropped.
        self.server.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        # `last_active` moves only with answers: bytes that start no request (empty
        # lines) must not keep an idle connection open.
        if self.reader.idle:
            self.request_started = time.monotonic()
        self.reader.feed(data)
        if self.task is None and not self.writing_paused:
            self._next()
        elif self.reader.buffered > MAX_BODY_BYTES + http11.MAX_HEAD_BYTES:
            self._pause_reading()  # a client sending ahead of its answers waits

    def _pause_reading(self) -> None:
        if self.transport is not None and not self.paused:
            self.transport.pause_reading()
            self.paused = True

    def pause_writing(self) -> None:
        # The client does not read its answers: read no more requests from it until
        # it does (asyncio's high-water mark), or the answers would pile up here.
        self.writing_paused = True
        self.last_active = time.monotonic()
        self._pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.last_active = time.monotonic()
        if self.task is None and self.transport is not None:
            self._go_on(self.transport)

    @property
    def idle(self) -> bool:
        return self.task is None and self.reader.idle and not self.writing_paused

    def _next(self) -> None:
        transport = self.transport
        if transport is None:
            return
        try:
            request = self.reader.next_request()
        except http11.ProtocolError as e:
            payload = json.dumps({"error": e.message}).encode()
            transport.write(http11.build_response(e.status, payload, close=True))
            transport.close()
            return
        if request is None:
            if self.reader.wants_continue():
                transport.write(http11.CONTINUE)
            return
        self.task = asyncio.get_running_loop().create_task(self._serve(request))

    async def _serve(self, request: http11.Request) -> None:
        weight = await self.server.budget.acquire(len(request.body))
        try:
            reply = await respond(self.server.state, request)
        except Exception:
            logger.exception("the webhook failed on %s %s", request.method, request.path[:200])
            reply = _error(500, "internal error (logged by the webhook)")
        finally:
            self.server.budget.release(weight)
        self.last_active = time.monotonic()
        self.task = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        close = not request.keep_alive or self.server.draining or self.server.stopping
        extra = (("Allow", reply.allow),) if reply.allow else ()
        transport.write(
            http11.build_response(
                reply.status, reply.body, content_type=reply.content_type, close=close, extra=extra
            )
        )
        if close:
            transport.close()
            return
        if self.writing_paused:
            return  # resume_writing() goes on with the next request
        self._go_on(transport)

    def _go_on(self, transport: asyncio.Transport) -> None:
        """Read again if reading was paused, and serve the next request read."""
        if self.paused:
            self.paused = False
            transport.resume_reading()
        self._next()

    def close(self, *, abort: bool = False) -> None:
        """Close after what is written (TLS close_notify first); `abort`: at once, for a
        client gone quiet (a TLS close would wait for its answer up to 30 s)."""
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()


class _Budget:
    """Request-body bytes being decided at once: a request waits while others hold
    the budget (one request alone always gets it)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: list[asyncio.Future[None]] = []

    async def acquire(self, size: int) -> int:
        weight = min(size, self.limit)
        while self.used and self.used + weight > self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
        self.used += weight
        return weight

    def release(self, weight: int) -> None:
        self.used -= weight
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)


class Server:
    """The running webhook server: started once policies are loaded, stopped on cleanup."""

    def __init__(
        self,
        state: runtime.Runtime,
        *,
        host: str,
        port: int,
        certfile: pathlib.Path,
        keyfile: pathlib.Path,
        drain_seconds: float = 0.0,
    ) -> None:
        """`drain_seconds`: how long `stop()` keeps answering (settings.AdmissionSettings.
        shutdown_drain), each connection closed after its next answer."""
        self.state = state
        self.drain_seconds = drain_seconds
        self.draining = False
        self.host = host
        self.port = port
        self.certfile = certfile
        self.keyfile = keyfile
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._loaded: tuple[float, float] | None = None
        self._listener: asyncio.Server | None = None
        self._watch: asyncio.Task[None] | None = None
        self.stopping = False
        self.connections: set[_Connection] = set()
        self.budget = _Budget(BODY_BUDGET)

    @classmethod
    def for_settings(
        cls,
        state: runtime.Runtime,
        admission: settings.AdmissionSettings,
        *,
        certfile: pathlib.Path,
        keyfile: pathlib.Path,
    ) -> Server:
        """The server `admission` describes (address, port, drain), for both places it
        runs: the operator's loop and the admission process."""
        return cls(
            state,
            host=admission.host,
            port=admission.port,
            certfile=certfile,
            keyfile=keyfile,
            drain_seconds=admission.shutdown_drain,
        )

    def _reload(self) -> bool:
        stamp = (self.certfile.stat().st_mtime, self.keyfile.stat().st_mtime)
        if stamp == self._loaded:
            return False
        self.context.load_cert_chain(self.certfile, self.keyfile)
        self._loaded = stamp
        return True

    async def start(self) -> None:
        self._reload()
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            lambda: _Connection(self),
            self.host,
            self.port,
            ssl=self.context,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            backlog=BACKLOG,
            reuse_address=True,
        )
        self._watch = asyncio.create_task(self._watch_connections())
        logger.info("admission webhook on https://%s:%d", self.host, self.port)

    def make_room(self) -> bool:
        """At the connection cap, close the connection idle the longest, so that a
        flood of idle sockets cannot lock the apiserver's next connection out; False
        when every connection is busy."""
        idle = [c for c in self.connections if c.idle]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c.last_active)
        self.connections.discard(oldest)  # at once: connection_lost() comes a turn later
        oldest.close(abort=True)
        return True

    def _sweep(self, now: float) -> None:
        """Close connections idle too long, or whose request stalls (slow clients would
        otherwise hold sockets and buffers for ever)."""
        for connection in list(self.connections):
            if connection.task is not None:
                continue
            if connection.writing_paused:  # its answers unread since then
                stale = now - connection.last_active > REQUEST_TIMEOUT
            elif connection.reader.idle:
                stale = now - connection.last_active > KEEPALIVE_TIMEOUT
            else:  # measured from its first byte: a trickle does not keep it alive
                stale = now - connection.request_started > REQUEST_TIMEOUT
            if stale:
                connection.close(abort=True)

    async def _watch_connections(self) -> None:
        while True:
            await asyncio.sleep(CERT_CHECK_INTERVAL)
            self._sweep(time.monotonic())
            try:
                if self._reload():
                    logger.info("serving certificate reloaded from %s", self.certfile)
            except (OSError, ssl.SSLError) as e:  # half-written files: try again next time
                logger.warning("could not reload the serving certificate: %s", e)

    async def stop(self) -> None:
        """Drain (see `drain_seconds`), then stop listening, let the reviews in flight
        finish (up to SHUTDOWN_TIMEOUT) and close every connection."""
        if self.drain_seconds > 0 and self._listener is not None and not self.draining:
            # A replica being deleted is still an endpoint for the apiserver a moment
            # longer, and the apiserver reuses the keep-alive connections it has: cutting
            # one under a review it just sent fails that review (EOF, not retried) under
            # failurePolicy Fail. So answer on, and have each connection closed by its
            # next answer, before shutting the rest.
            self.draining = True
            logger.info("draining the webhook server for %.1fs before it stops", self.drain_seconds)
            await asyncio.sleep(self.drain_seconds)
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._listener is None:
            return
        self._listener.close()
        self.stopping = True  # answers still in flight close their connections
        for connection in [c for c in self.connections if c.idle]:
            connection.close()
        pending = [c.task for c in self.connections if c.task is not None]
        if pending:
            await asyncio.wait(pending, timeout=SHUTDOWN_TIMEOUT)
        for connection in list(self.connections):
            connection.close()
        self._listener = None
