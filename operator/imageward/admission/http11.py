"""HTTP/1.1 requests read from bytes, for the webhook server (no I/O here).

The webhook's only client is the apiserver: POSTs with a Content-Length body, kept
alive, and a GET of `/healthz` from kubelet. This reader accepts that and what RFC 9112
requires of a server around it, and refuses the rest with the status a client can act
on. It is strict where a lenient parser is how requests get smuggled or memory gets
taken: one Content-Length (or several that agree), no Transfer-Encoding, no bare CR or
LF, no folded or malformed header lines, and a cap on the header block, the header
count and the body, each checked before the bytes are kept.

`RequestReader.feed()` appends what arrived; `next_request()` returns the next complete
request, None while one is incomplete, or raises `ProtocolError` with a status.
"""

from __future__ import annotations

import dataclasses
import re

#: The request line and headers together, at most (aiohttp's default is 8 KiB lines).
MAX_HEAD_BYTES = 32 * 1024
MAX_HEADERS = 100

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FORBIDDEN_IN_LINE = re.compile(rb"[\r\n\x00]")
_VERSIONS = {b"HTTP/1.1": (1, 1), b"HTTP/1.0": (1, 0)}


class ProtocolError(Exception):
    """A request this server will not read: answered with `status`, then the connection
    closes (what follows on it cannot be trusted to start a request)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    """The target's path, without its query (the apiserver adds `?timeout=10s`)."""

    version: tuple[int, int]
    headers: dict[str, str]
    """Lower-cased names; a repeated header's values joined by ", " (RFC 9110 5.3)."""

    body: bytes

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == (1, 0):
            return "keep-alive" in tokens
        return "close" not in tokens


@dataclasses.dataclass(frozen=True, slots=True)
class _Head:
    method: str
    path: str
    version: tuple[int, int]
    headers: dict[str, str]
    length: int
    expects_continue: bool


def _parse_head(block: bytes) -> _Head:
    lines = block.split(b"\r\n")
    request_line = lines[0]
    if _FORBIDDEN_IN_LINE.search(request_line):
        raise ProtocolError(400, "bare CR, LF or NUL in the request line")
    parts = request_line.split(b" ")
    if len(parts) != 3:
        raise ProtocolError(400, "the request line is not METHOD SP TARGET SP VERSION")
    method, target, version_text = parts
    if not _TOKEN.fullmatch(method):
        raise ProtocolError(400, "the method is not a token")
    version = _VERSIONS.get(version_text)
    if version is None:
        raise ProtocolError(505, "only HTTP/1.1 and HTTP/1.0 are served")
    if not target.startswith(b"/"):
        raise ProtocolError(400, "the target is not a path (origin-form)")
    if len(lines) - 1 > MAX_HEADERS:
        raise ProtocolError(431, f"more than {MAX_HEADERS} header fields")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            # Includes a line starting with whitespace (obsolete folding, RFC 9112 5.2)
            # and whitespace before the colon (RFC 9112 5.1): both must be refused.
            raise ProtocolError(400, f"malformed header field line {line[:40]!r}")
        if _FORBIDDEN_IN_LINE.search(value):
            raise ProtocolError(400, "bare CR, LF or NUL in a header field")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    if "transfer-encoding" in headers:
        raise ProtocolError(501, "Transfer-Encoding is not accepted; send Content-Length")
    length = 0
    if "content-length" in headers:
        values = {v.strip() for v in headers["content-length"].split(",")}
        if len(values) != 1:
            raise ProtocolError(400, "Content-Length values differ")
        (text,) = values
        if not (text.isdigit() and text.isascii() and len(text) <= 12):
            raise ProtocolError(400, "Content-Length is not a decimal number")
        length = int(text)
    expects = headers.get("expect", "").lower()
    if expects and expects != "100-continue":
        raise ProtocolError(417, "only Expect: 100-continue is understood")
    path = target.partition(b"?")[0].decode("latin-1")
    return _Head(method.decode("ascii"), path, version, headers, length, bool(expects))


class RequestReader:
    """The requests of one connection, from the bytes it delivered, in order."""

    def __init__(self, max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes
        self._buffer = bytearray()
        self._head: _Head | None = None
        self._continued = False
        self._scanned = 0  # bytes of the buffer known to hold no CRLFCRLF

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def idle(self) -> bool:
        """Nothing of a next request has arrived."""
        return self._head is None and not self._buffer

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def wants_continue(self) -> bool:
        """True once when a request's head asked for `100 Continue` and its body is
        still to come: the caller sends the interim answer."""
        head = self._head
        if head is None or not head.expects_continue or self._continued:
            return False
        if len(self._buffer) >= head.length:
            return False
        self._continued = True
        return True

    def next_request(self) -> Request | None:
        if self._head is None:
            # RFC 9112 2.2: a server should ignore empty lines before a request line.
            while self._buffer.startswith(b"\r\n"):
                del self._buffer[:2]
                self._scanned = max(0, self._scanned - 2)
            # Search only what arrived since the last look (and 3 bytes before it, for
            # a CRLFCRLF split across feeds): a head trickling in is not re-scanned.
            start = max(0, self._scanned - 3)
            end = self._buffer.find(b"\r\n\r\n", start, MAX_HEAD_BYTES + 4)
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    raise ProtocolError(431, f"the request head is over {MAX_HEAD_BYTES} bytes")
                self._scanned = len(self._buffer)
                return None
            self._scanned = 0
            head = _parse_head(bytes(self._buffer[:end]))
            if head.length > self.max_body_bytes:
                raise ProtocolError(
                    413, f"a body of {head.length} bytes is over the {self.max_body_bytes} limit"
                )
            del self._buffer[: end + 4]
            self._head = head
            self._continued = False
        head = self._head
        if len(self._buffer) < head.length:
            return None
        body = bytes(self._buffer[: head.length])
        del self._buffer[: head.length]
        self._head = None
        return Request(head.method, head.path, head.version, head.headers, body)


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def build_response(
    status: int,
    body: bytes,
    *,
    content_type: str = "application/json",
    close: bool = False,
    extra: tuple[tuple[str, str], ...] = (),
) -> bytes:
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    head.append(f"Content-Type: {content_type}")
    head.append(f"Content-Length: {len(body)}")
    head.extend(f"{name}: {value}" for name, value in extra)
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
