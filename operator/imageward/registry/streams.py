"""A light registry transport for one-shot commands: HTTP/1.1 on asyncio streams.

`imageward check` runs once per image in CI pipelines, so its start-up is part of every
answer; importing aiohttp is the largest part of it. This transport does what
`transport.Transport` does (one request at a time, body capped and optionally hashed or
streamed to a sink, redirects and retries left to the client, no cookies, no proxies
from the environment) with the standard library only, and raises the same errors, so
`RegistryClient` cannot tell them apart. The operator keeps aiohttp's pooled session.

Connections are kept alive per (scheme, host, port) and reused; one that went stale
while idle is replaced once, before any byte of the answer came. The parsing of the
answer's head and of chunked bodies is pure (`parse_head`, `ChunkedDecoder`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any, TypeVar, overload

from imageward import records
from imageward.registry import manifests, model, transport
from imageward.registry.transport import short_url as _short
from imageward.registry.transport import to_sink as _to_sink

_CHUNK = 64 * 1024
_MAX_HEAD = 64 * 1024  # status line and headers together
_NO_BODY_STATUSES = frozenset({204, 304})

_set = object.__setattr__  # how a frozen Record's __init__ sets its fields
_D = TypeVar("_D")
_MISSING: Any = object()


class HeadError(ValueError):
    """The answer's status line or headers are not HTTP/1.1."""


class Headers:
    """An answer's header fields: several values per name, names case-insensitive.

    What the client reads of aiohttp's `multidict.CIMultiDictProxy` (`transport.Headers`),
    with its semantics (the first value, or every value in order; a name is looked up as
    its `lower()`), without importing multidict (and the `platform` module it loads).
    """

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[str, list[str]] = {}  # lower-cased name -> values, in order

    def add(self, name: str, value: str) -> None:
        values = self._values.get(key := name.lower())
        if values is None:
            self._values[key] = [value]
        else:
            values.append(value)

    @overload
    def get(self, key: str) -> str | None: ...

    @overload
    def get(self, key: str, default: _D) -> str | _D: ...

    def get(self, key: str, default: Any = None) -> Any:
        """The first value of `key`, else `default`."""
        values = self._values.get(key.lower())
        return values[0] if values else default

    @overload
    def getall(self, key: str) -> list[str]: ...

    @overload
    def getall(self, key: str, default: _D) -> list[str] | _D: ...

    def getall(self, key: str, default: Any = _MISSING) -> Any:
        """Every value of `key` in order, else `default`; a KeyError without one."""
        values = self._values.get(key.lower())
        if values:
            return list(values)
        if default is _MISSING:
            raise KeyError(f"Key not found: {key!r}")
        return default

    def __repr__(self) -> str:
        return f"<Headers({self._values!r})>"


class Head(records.Record):
    """The status line and header fields of one answer (`parse_head`)."""

    __slots__ = ("headers", "keep_alive", "status")
    status: int
    headers: Headers
    keep_alive: bool

    def __init__(self, status: int, headers: Headers, keep_alive: bool) -> None:
        _set(self, "status", status)
        _set(self, "headers", headers)
        _set(self, "keep_alive", keep_alive)

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        if value is None:
            return None
        if not value.strip().isdigit():
            raise HeadError(f"Content-Length {value!r} is not a number")
        return int(value)

    @property
    def chunked(self) -> bool:
        encoding = self.headers.get("Transfer-Encoding", "")
        return encoding.rsplit(",", 1)[-1].strip().lower() == "chunked"


def parse_head(data: bytes) -> Head:
    """Status line and headers (`data` ends with the blank line)."""
    try:
        text = data.decode("latin-1")
    except UnicodeDecodeError as e:  # pragma: no cover - latin-1 decodes every byte
        raise HeadError(str(e)) from e
    lines = text.split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest.partition(" ")[0]
    if version not in ("HTTP/1.1", "HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise HeadError(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
    headers = Headers()
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise HeadError(f"malformed header line {line[:80]!r}")
        headers.add(name, value.strip())
    tokens = {t.strip().lower() for t in headers.get("Connection", "").split(",")}
    keep_alive = "close" not in tokens if version == "HTTP/1.1" else "keep-alive" in tokens
    return Head(int(code), headers, keep_alive)


def build_request(
    method: str,
    target: str,
    host: str,
    headers: Mapping[str, str],
    body: bytes | None,
    user_agent: str,
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    names = {name.lower() for name in headers}
    if "user-agent" not in names:
        lines.append(f"User-Agent: {user_agent}")
    if "accept" not in names:
        lines.append("Accept: */*")
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name!r} holds a line break")
        lines.append(f"{name}: {value}")
    if body is not None or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body or b'')}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


class ChunkedDecoder:
    """Feed it bytes of a chunked body; `take()` what is decoded; `done` at the end."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._out = bytearray()
        self._remaining = 0  # bytes left in the current chunk
        self._state = "size"  # size | data | data-end | trailer
        self.done = False

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while not self.done:
            if self._state == "size":
                end = self._buffer.find(b"\r\n")
                if end < 0:
                    if len(self._buffer) > 1024:
                        raise HeadError("chunk size line too long")
                    return
                line = bytes(self._buffer[:end]).split(b";", 1)[0].strip()
                del self._buffer[: end + 2]
                try:
                    size = int(line, 16)
                except ValueError as e:
                    raise HeadError(f"bad chunk size {line[:20]!r}") from e
                if size < 0:
                    raise HeadError("negative chunk size")
                self._remaining = size
                self._state = "data" if size else "trailer"
            elif self._state == "data":
                if not self._buffer:
                    return
                piece = self._buffer[: self._remaining]
                self._out += piece
                del self._buffer[: len(piece)]
                self._remaining -= len(piece)
                if self._remaining == 0:
                    self._state = "data-end"
            elif self._state == "data-end":
                if len(self._buffer) < 2:
                    return
                if self._buffer[:2] != b"\r\n":
                    raise HeadError("chunk not followed by CRLF")
                del self._buffer[:2]
                self._state = "size"
            else:  # trailer: header lines until an empty one
                end = self._buffer.find(b"\r\n")
                if end < 0:
                    return
                empty = end == 0
                del self._buffer[: end + 2]
                if empty:
                    self.done = True

    def take(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out


_Key = tuple[str, str, int]
_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class StreamTransport(transport.Transport):
    """`transport.Transport`'s interface and errors, on asyncio streams (no aiohttp)."""

    # Loading the system trust store costs tens of milliseconds, which a check of images
    # on plain-HTTP registries (or of none) need not pay; a CA bundle that cannot be read
    # fails the first HTTPS request instead (TLSError or ConnectError).
    tls_at_start = False

    def __init__(
        self,
        *,
        max_concurrency: int = 64,
        ca_bundle: str | None = None,
        user_agent: str = transport.USER_AGENT,
        counted: bool = True,
    ) -> None:
        """`counted=False` records no `imageward_registry_request*` metrics: a process
        that exports none (`imageward check`) then never imports prometheus_client."""
        super().__init__(
            max_concurrency=max_concurrency, ca_bundle=ca_bundle, user_agent=user_agent
        )
        self._counted = counted
        self._idle: dict[_Key, list[_Connection]] = {}
        self._open = 0
        self._slots: asyncio.Semaphore | None = None

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for _, writer in connections:
                writer.close()
        for connections in idle.values():
            for _, writer in connections:
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()

    async def _connect(self, key: _Key) -> _Connection:
        scheme, host, port = key
        if scheme == "https":
            return await asyncio.open_connection(
                host, port, ssl=self._ssl, server_hostname=host.strip("[]")
            )
        return await asyncio.open_connection(host, port)

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        time_limit: float,
        max_bytes: int,
        kind: str,
        registry: str,
        body: bytes | None = None,
        hash_as: model.Digest | None = None,
        sink: transport.BodySink | None = None,
    ) -> transport.Response:
        """As `transport.Transport.request`."""
        if self._closed:
            raise RuntimeError("the registry transport is closed")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max_concurrency)
        started = time.perf_counter()
        state: dict[str, Any] = {"code": "error", "received": 0, "expected": None}
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme
        host = parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        key = (scheme, host if ":" not in host else f"[{host}]", port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = parts.netloc.rpartition("@")[2]
        raw = build_request(method, target, host_header, headers, body, self._user_agent)
        try:
            async with self._slots, asyncio.timeout(time_limit):
                return await self._exchange(key, raw, method, url, max_bytes, hash_as, sink, state)
        except TimeoutError as e:
            detail = (
                f" (headers came, body {state['received']} of {state['expected'] or '?'} bytes)"
                if state["code"] != "error"
                else ""
            )
            state["code"] = transport.RequestTimeout.code
            raise transport.RequestTimeout(
                f"{method} {_short(url)}: no complete answer within {time_limit:.2f}s{detail}"
            ) from e
        except transport.BodyTooLarge as e:
            state["code"] = transport.BodyTooLarge.code
            raise transport.BodyTooLarge(
                f"{method} {_short(url)}: {e}", size=e.size, limit=e.limit
            ) from None
        except ssl.SSLError as e:
            raise transport.TLSError(f"{method} {_short(url)}: TLS failed: {e}") from e
        except asyncio.IncompleteReadError as e:
            raise transport.ConnectError(
                f"{method} {_short(url)}: the answer broke off after {state['received']} bytes"
                f" ({e})"
            ) from e
        except (HeadError, asyncio.LimitOverrunError) as e:
            raise transport.ConnectError(f"{method} {_short(url)}: not an HTTP answer: {e}") from e
        except OSError as e:
            raise transport.ConnectError(f"{method} {_short(url)}: {type(e).__name__}: {e}") from e
        finally:
            if self._counted:
                from imageward import metrics

                metrics.observe_registry_request(
                    registry, kind, state["code"], time.perf_counter() - started
                )

    async def _exchange(
        self,
        key: _Key,
        raw: bytes,
        method: str,
        url: str,
        max_bytes: int,
        hash_as: model.Digest | None,
        sink: transport.BodySink | None,
        state: dict[str, Any],
    ) -> transport.Response:
        idle = self._idle.get(key)
        reused = bool(idle)
        reader, writer = idle.pop() if idle else await self._connect(key)
        try:
            try:
                writer.write(raw)
                await writer.drain()
                head_bytes = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError) as e:
                if not reused or (isinstance(e, asyncio.IncompleteReadError) and e.partial):
                    raise
                writer.close()  # went stale while idle: once more, on a new connection
                reader, writer = await self._connect(key)
                writer.write(raw)
                await writer.drain()
                head_bytes = await reader.readuntil(b"\r\n\r\n")
            if len(head_bytes) > _MAX_HEAD:
                raise HeadError("head larger than 64 KiB")
            head = parse_head(head_bytes)
            while 100 <= head.status < 200:  # interim answers (100 Continue)
                head = parse_head(await reader.readuntil(b"\r\n\r\n"))
            state["code"] = str(head.status)
            response, reusable = await self._read_body(
                reader, head, method, url, max_bytes, hash_as, sink, state
            )
        except BaseException:
            writer.close()
            raise
        if reusable and head.keep_alive and not self._closed:
            self._idle.setdefault(key, []).append((reader, writer))
        else:
            writer.close()
        return response

    async def _read_body(
        self,
        reader: asyncio.StreamReader,
        head: Head,
        method: str,
        url: str,
        max_bytes: int,
        hash_as: model.Digest | None,
        sink: transport.BodySink | None,
        state: dict[str, Any],
    ) -> tuple[transport.Response, bool]:
        expected = None if method == "HEAD" else head.content_length
        state["expected"] = expected
        if expected is not None and expected > max_bytes:
            raise transport.BodyTooLarge(
                f"answer is {expected} bytes, over the limit of {max_bytes}",
                size=expected,
                limit=max_bytes,
            )
        hasher: Any = manifests.build_hasher(hash_as) if hash_as else None
        chunks: list[bytes] = []
        streaming = sink is not None and 200 <= head.status < 300
        has_body = method != "HEAD" and head.status not in _NO_BODY_STATUSES
        reusable = True

        async def accept(chunk: bytes) -> None:
            state["received"] += len(chunk)
            if state["received"] > max_bytes:
                raise transport.BodyTooLarge(
                    f"answer exceeds the limit of {max_bytes} bytes "
                    "(no Content-Length, cut while streaming)",
                    size=None,
                    limit=max_bytes,
                )
            if hasher is not None:
                hasher.update(chunk)
            if streaming and sink is not None:
                await _to_sink(sink.write(chunk))
            else:
                chunks.append(chunk)

        if has_body:
            if streaming and sink is not None:
                await _to_sink(sink.begin())
            if head.chunked:
                decoder = ChunkedDecoder()
                while not decoder.done:
                    data = await reader.read(_CHUNK)
                    if not data:
                        raise asyncio.IncompleteReadError(b"", None)
                    decoder.feed(data)
                    piece = decoder.take()
                    if piece:
                        await accept(piece)
            elif expected is not None:
                left = expected
                while left:
                    data = await reader.read(min(_CHUNK, left))
                    if not data:
                        raise asyncio.IncompleteReadError(b"", left)
                    left -= len(data)
                    await accept(data)
            else:  # delimited by the end of the connection
                reusable = False
                while data := await reader.read(_CHUNK):
                    await accept(data)
        digest = None
        if hasher is not None and hash_as is not None:
            digest = model.Digest(f"{hash_as.partition(':')[0]}:{hasher.hexdigest()}")
        response = transport.Response(
            status=head.status,
            url=url,
            headers=head.headers,
            body=b"".join(chunks),
            digest=digest,
        )
        return response, reusable
