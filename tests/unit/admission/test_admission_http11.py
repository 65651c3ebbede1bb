"""The webhook's HTTP/1.1 reader: what the apiserver sends is read, in pieces or
pipelined; what request smuggling and memory exhaustion are made of is refused with the
status that says why."""

from __future__ import annotations

import pytest

from imageward.admission import http11

REVIEW = (
    b"POST /imageward-validate?timeout=10s HTTP/1.1\r\n"
    b"Host: imageward.imageward.svc:443\r\n"
    b"User-Agent: kube-apiserver-admission\r\n"
    b"Content-Length: 13\r\n"
    b"Accept: application/json, */*\r\n"
    b"Content-Type: application/json\r\n"
    b"Accept-Encoding: gzip\r\n"
    b"\r\n"
    b'{"kind":"x"} '
)


def _read(data: bytes, *, max_body: int = 1024) -> list[http11.Request]:
    reader = http11.RequestReader(max_body)
    reader.feed(data)
    found = []
    while (request := reader.next_request()) is not None:
        found.append(request)
    return found


def _refused(data: bytes, *, max_body: int = 1024) -> http11.ProtocolError:
    with pytest.raises(http11.ProtocolError) as caught:
        _read(data, max_body=max_body)
    return caught.value


def test_the_apiservers_review_is_read() -> None:
    (request,) = _read(REVIEW)
    assert request.method == "POST"
    assert request.path == "/imageward-validate"  # its query left behind
    assert request.body == b'{"kind":"x"} '
    assert request.headers["content-type"] == "application/json"
    assert request.keep_alive


def test_a_request_arriving_byte_by_byte_is_read_once_whole() -> None:
    reader = http11.RequestReader(1024)
    for i in range(len(REVIEW) - 1):
        reader.feed(REVIEW[i : i + 1])
        assert reader.next_request() is None
    reader.feed(REVIEW[-1:])
    request = reader.next_request()
    assert request is not None and request.body == b'{"kind":"x"} '
    assert reader.idle


def test_pipelined_requests_come_out_in_order() -> None:
    health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    requests = _read(health + REVIEW + b"\r\n" + health)
    assert [r.path for r in requests] == ["/healthz", "/imageward-validate", "/healthz"]


@pytest.mark.parametrize(
    ("connection", "version", "keep_alive"),
    [
        (None, b"HTTP/1.1", True),
        (b"close", b"HTTP/1.1", False),
        (b"Keep-Alive, Close", b"HTTP/1.1", False),
        (None, b"HTTP/1.0", False),
        (b"keep-alive", b"HTTP/1.0", True),
    ],
)
def test_keep_alive_follows_the_version_and_connection(
    connection: bytes | None, version: bytes, keep_alive: bool
) -> None:
    head = b"GET /healthz " + version + b"\r\n"
    if connection is not None:
        head += b"Connection: " + connection + b"\r\n"
    (request,) = _read(head + b"\r\n")
    assert request.keep_alive is keep_alive


@pytest.mark.parametrize(
    ("data", "status", "says"),
    [
        # Request smuggling: two framings, or one this reader does not do.
        (
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            501,
            "Transfer-Encoding",
        ),
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400, "differ"),
        (b"POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n", 400, "differ"),
        (b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n", 400, "decimal"),
        (b"POST / HTTP/1.1\r\nContent-Length: 0x3\r\n\r\n", 400, "decimal"),
        (b"POST / HTTP/1.1\r\nContent-Length: \xd9\xa3\r\n\r\n", 400, "decimal"),
        (b"POST / HTTP/1.1\r\nContent-Length : 3\r\n\r\n", 400, "malformed header"),
        (b"POST / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", 400, "malformed header"),
        (b"POST / HTTP/1.1\r\nX: a\nContent-Length: 3\r\n\r\n", 400, "bare CR"),
        (b"POST / HTTP/1.1\r\nX: a\rb\r\n\r\n", 400, "bare CR"),
        (b"POST / HTTP/1.1\r\nX: a\x00\r\n\r\n", 400, "bare CR"),
        (b"POST /\n HTTP/1.1\r\n\r\n", 400, "bare CR"),
        # Not a request this server can answer.
        (b"POST / HTTP/2.0\r\n\r\n", 505, "HTTP/1.1"),
        (b"POST  / HTTP/1.1\r\n\r\n", 400, "request line"),
        (b"POST http://evil/ HTTP/1.1\r\n\r\n", 400, "origin-form"),
        (b"P(ST / HTTP/1.1\r\n\r\n", 400, "method"),
        (b"POST / HTTP/1.1\r\nExpect: 200-ok\r\n\r\n", 417, "100-continue"),
    ],
)
def test_what_is_refused(data: bytes, status: int, says: str) -> None:
    error = _refused(data)
    assert error.status == status
    assert says in error.message


def test_every_size_and_count_has_a_cap() -> None:
    huge_head = b"GET / HTTP/1.1\r\nX: " + b"a" * http11.MAX_HEAD_BYTES + b"\r\n\r\n"
    assert _refused(huge_head).status == 431
    # Refused before the terminating blank line arrives: the bytes are not kept waiting.
    reader = http11.RequestReader(1024)
    reader.feed(huge_head[: http11.MAX_HEAD_BYTES + 1])
    with pytest.raises(http11.ProtocolError):
        reader.next_request()
    many = b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * (http11.MAX_HEADERS + 1) + b"\r\n"
    assert _refused(many).status == 431
    # A body over the limit is refused from its head, before any of it is read.
    error = _refused(b"POST / HTTP/1.1\r\nContent-Length: 1025\r\n\r\n", max_body=1024)
    assert error.status == 413 and "1025" in error.message and "1024" in error.message
    assert _read(b"POST / HTTP/1.1\r\nContent-Length: 1024\r\n\r\n" + b"x" * 1024)


def test_expect_continue_is_asked_for_once_while_the_body_is_due() -> None:
    reader = http11.RequestReader(1024)
    reader.feed(b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert reader.next_request() is None
    assert reader.wants_continue()
    assert not reader.wants_continue()
    reader.feed(b"ok")
    request = reader.next_request()
    assert request is not None and request.body == b"ok"


def test_responses_carry_their_length_and_close_when_asked() -> None:
    assert http11.build_response(200, b"{}") == (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    )
    closing = http11.build_response(405, b"", close=True, extra=(("Allow", "POST"),))
    assert b"Allow: POST\r\n" in closing and closing.endswith(b"Connection: close\r\n\r\n")


def test_a_head_trickling_in_a_byte_at_a_time_is_read_once_whole() -> None:
    # Each feed searches only what is new (and the 3 bytes before it, for a CRLFCRLF
    # split across feeds), so a slow client costs linear time, and splits anywhere
    # (between CR and LF, between the two CRLFs) still end the head where it ends.
    reader = http11.RequestReader(1024)
    found = []
    for byte in REVIEW + REVIEW:
        reader.feed(bytes([byte]))
        while (request := reader.next_request()) is not None:
            found.append(request)
    assert [r.body for r in found] == [b'{"kind":"x"} ', b'{"kind":"x"} ']
    assert all(r.path == "/imageward-validate" for r in found)


def test_empty_lines_trickling_in_before_a_request_are_skipped() -> None:
    reader = http11.RequestReader(1024)
    found = []
    for piece in (b"\r", b"\n", b"\r\n\r", b"\n", REVIEW[:10], REVIEW[10:]):
        reader.feed(piece)
        while (request := reader.next_request()) is not None:
            found.append(request)
    assert [r.path for r in found] == ["/imageward-validate"]
