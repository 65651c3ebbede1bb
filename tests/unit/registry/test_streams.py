"""The CLI's stream transport: answer heads, requests, chunked bodies (pure), and when it
loads a trust store."""

from __future__ import annotations

import asyncio
import pathlib
import ssl

import pytest

from imageward.admission import pki
from imageward.registry import streams


def test_parse_head_reads_status_headers_and_keep_alive() -> None:
    head = streams.parse_head(
        b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nDocker-Content-Digest: sha256:ab\r\n"
        b"WWW-Authenticate: Bearer a\r\nWWW-Authenticate: Basic b\r\n\r\n"
    )
    assert head.status == 200 and head.keep_alive and head.content_length == 12
    assert head.headers.getall("www-authenticate") == ["Bearer a", "Basic b"]
    assert not head.chunked


def test_parse_head_connection_close_and_http10() -> None:
    assert not streams.parse_head(b"HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n").keep_alive
    assert not streams.parse_head(b"HTTP/1.0 200 OK\r\n\r\n").keep_alive
    assert streams.parse_head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n").keep_alive
    chunked = streams.parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
    assert chunked.chunked and chunked.content_length is None


@pytest.mark.parametrize(
    "data",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n folded: header\r\n\r\n",
    ],
)
def test_parse_head_refuses_what_is_not_http(data: bytes) -> None:
    with pytest.raises(streams.HeadError):
        streams.parse_head(data)


def test_content_length_must_be_a_number() -> None:
    head = streams.parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n")
    with pytest.raises(streams.HeadError):
        _ = head.content_length


def test_build_request_sets_host_agent_accept_and_length() -> None:
    raw = streams.build_request(
        "GET", "/v2/a/manifests/1?x=y", "127.0.0.1:5000", {"Accept": "m/t"}, None, "ua/1"
    )
    assert raw == (
        b"GET /v2/a/manifests/1?x=y HTTP/1.1\r\nHost: 127.0.0.1:5000\r\nUser-Agent: ua/1\r\n"
        b"Accept: m/t\r\n\r\n"
    )
    post = streams.build_request("POST", "/t", "h", {}, b"abc", "ua")
    assert post.endswith(b"Accept: */*\r\nContent-Length: 3\r\n\r\nabc")
    with pytest.raises(ValueError):
        streams.build_request("GET", "/", "h", {"X": "a\r\nInjected: 1"}, None, "ua")


def test_chunked_decoder_in_any_split() -> None:
    body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nTrailer: x\r\n\r\n"
    for step in (1, 2, 3, 7, len(body)):
        decoder = streams.ChunkedDecoder()
        out = b""
        for start in range(0, len(body), step):
            decoder.feed(body[start : start + step])
            out += decoder.take()
        assert decoder.done
        assert out == b"Wikipedia in\r\n\r\nchunks."


@pytest.mark.parametrize("body", [b"zz\r\n", b"3\r\nabcX\r\n", b"-1\r\n"])
def test_chunked_decoder_refuses_bad_framing(body: bytes) -> None:
    decoder = streams.ChunkedDecoder()
    with pytest.raises(streams.HeadError):
        decoder.feed(body)


# -- the TLS context: loaded at the first HTTPS connection, not before ------------------------


async def _serve_once(tls: ssl.SSLContext | None) -> tuple[asyncio.Server, int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=tls)
    return server, server.sockets[0].getsockname()[1]


async def _get(transport: streams.StreamTransport, url: str) -> bytes:
    response = await transport.request(
        "GET", url, headers={}, time_limit=10, max_bytes=1024, kind="manifest", registry="r"
    )
    assert response.status == 200
    return response.body


async def test_plain_http_never_loads_a_trust_store() -> None:
    server, port = await _serve_once(None)
    transport = streams.StreamTransport()
    try:
        assert await _get(transport, f"http://127.0.0.1:{port}/v2/") == b"ok"
        assert transport._ssl_context is None
    finally:
        await transport.close()
        server.close()


async def test_https_loads_the_trust_store_and_ca_bundle_at_the_first_connection(
    tmp_path: pathlib.Path,
) -> None:
    authority = pki.CertificateAuthority.create()
    serving = authority.issue("localhost", ip_addresses=["127.0.0.1"], server=True)
    (tmp_path / "ca.crt").write_bytes(authority.cert_pem)
    (tmp_path / "tls.crt").write_bytes(serving.cert_pem)
    (tmp_path / "tls.key").write_bytes(serving.key_pem)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    server, port = await _serve_once(tls)
    transport = streams.StreamTransport(ca_bundle=str(tmp_path / "ca.crt"))
    try:
        assert transport._ssl_context is None
        assert await _get(transport, f"https://127.0.0.1:{port}/v2/") == b"ok"
        assert transport._ssl_context is not None
    finally:
        await transport.close()
        server.close()


def test_headers_are_a_case_insensitive_multidict() -> None:
    """What the client reads of an answer's headers, as multidict.CIMultiDictProxy reads it."""
    headers = streams.Headers()
    headers.add("WWW-Authenticate", "Bearer a")
    headers.add("Location", "/x")
    headers.add("www-authenticate", "Basic b")
    assert headers.get("location") == headers.get("LOCATION") == "/x"
    assert headers.get("Link") is None and headers.get("Link", "") == ""
    assert headers.getall("Www-Authenticate") == ["Bearer a", "Basic b"]
    default: list[str] = []
    assert headers.getall("Link", default) is default
    with pytest.raises(KeyError, match="Link"):
        headers.getall("Link")
