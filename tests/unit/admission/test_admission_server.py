"""The webhook server's stop: it drains before it shuts (loopback sockets only, no cluster).

Found on the real node: deleting a replica under admission load failed a review now and
then with `EOF` (the apiserver does not retry that), because the server shut keep-alive
connections the apiserver had just sent a review on. Draining answers on, each answer
saying `Connection: close`, so the apiserver's next review goes on a new connection.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import pathlib
import ssl
import time
from typing import cast

import pytest

from imageward import runtime, settings
from imageward.admission import endpoints, http11, tls
from imageward.localcluster import processes
from tests.unit.admission import samples


def _client_context(material: tls.Material, directory: pathlib.Path) -> ssl.SSLContext:
    ca = directory / "client-ca.crt"
    ca.write_bytes(material.ca_cert_pem)
    return ssl.create_default_context(cafile=str(ca))


async def _start(tmp_path: pathlib.Path, drain: float) -> tuple[endpoints.Server, ssl.SSLContext]:
    material = tls.build_material(["localhost"], ["127.0.0.1"])
    certfile, keyfile, _ = material.write(tmp_path / "tls")
    server = endpoints.Server(
        cast(runtime.Runtime, None),  # /healthz reads no state
        host="127.0.0.1",
        port=processes.free_port(),
        certfile=certfile,
        keyfile=keyfile,
        drain_seconds=drain,
    )
    await server.start()
    return server, _client_context(material, tmp_path)


def _get(connection: http.client.HTTPSConnection) -> tuple[int, str | None]:
    connection.request("GET", "/healthz")
    response = connection.getresponse()
    response.read()
    return response.status, response.getheader("Connection")


async def test_stop_answers_on_during_the_drain_and_closes_each_connection_after(
    tmp_path: pathlib.Path,
) -> None:
    server, context = await _start(tmp_path, drain=1.0)
    held = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=5)
    try:
        assert await asyncio.to_thread(_get, held) == (200, None)  # kept alive

        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0.2)
        # The connection the client holds gets one more answer, telling it to go.
        assert await asyncio.to_thread(_get, held) == (200, "close")
        # A client whose endpoint list is not updated yet still gets an answer.
        late = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=5)
        assert await asyncio.to_thread(_get, late) == (200, "close")
        late.close()
        assert not stopping.done()

        await asyncio.wait_for(stopping, timeout=10)
        refused = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=5)
        try:
            await asyncio.to_thread(_get, refused)
        except ConnectionRefusedError:
            pass
        else:
            raise AssertionError("the server still answers after the drain")
        finally:
            refused.close()
    finally:
        held.close()


async def test_without_a_drain_stop_is_at_once(tmp_path: pathlib.Path) -> None:
    server, _ = await _start(tmp_path, drain=0.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await server.stop()
    assert loop.time() - started < 0.5
    assert not server.draining


def _exchange(port: int, context: ssl.SSLContext, data: bytes, *, timeout: float = 5) -> bytes:
    """Send raw bytes on a new TLS connection; everything the server sends until it
    closes (or goes quiet for a second)."""
    import socket

    with (
        socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls_socket,
    ):
        tls_socket.sendall(data)
        tls_socket.settimeout(1.0)
        received = b""
        while True:
            try:
                chunk = tls_socket.recv(65536)
            except TimeoutError:
                return received
            if not chunk:
                return received
            received += chunk


async def test_what_is_not_a_review_gets_a_status_that_says_so(tmp_path: pathlib.Path) -> None:
    server, context = await _start(tmp_path, drain=0.0)
    try:
        port = server.port

        def ask(method: str, path: str, body: bytes = b"") -> tuple[int, str | None, bytes]:
            connection = http.client.HTTPSConnection("127.0.0.1", port, context=context)
            try:
                connection.request(method, path, body=body or None)
                response = connection.getresponse()
                return response.status, response.getheader("Allow"), response.read()
            finally:
                connection.close()

        assert await asyncio.to_thread(ask, "GET", "/nothing") == (
            404,
            None,
            b'{"error": "nothing is served at /nothing"}',
        )
        status, allow, _ = await asyncio.to_thread(ask, "GET", "/imageward-validate")
        assert (status, allow) == (405, "POST")
        status, allow, _ = await asyncio.to_thread(ask, "POST", "/healthz", b"{}")
        assert (status, allow) == (405, "GET")
        status, _, answer = await asyncio.to_thread(ask, "POST", "/imageward-validate", b"{no")
        assert status == 400 and b"body is not JSON" in answer
        status, _, answer = await asyncio.to_thread(ask, "POST", "/imageward-validate", b"[]")
        assert status == 400 and b"AdmissionReview" in answer
    finally:
        await server.stop()


async def test_a_hostile_request_is_answered_and_its_connection_closed(
    tmp_path: pathlib.Path,
) -> None:
    server, context = await _start(tmp_path, drain=0.0)
    try:
        smuggled = (
            b"POST /imageward-validate HTTP/1.1\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n"
        )
        answer = await asyncio.to_thread(_exchange, server.port, context, smuggled)
        assert answer.startswith(b"HTTP/1.1 501 Not Implemented\r\n")
        assert b"Connection: close" in answer and answer.count(b"HTTP/1.1") == 1
        oversized = b"POST /imageward-validate HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (
            endpoints.MAX_BODY_BYTES + 1
        )
        answer = await asyncio.to_thread(_exchange, server.port, context, oversized)
        assert answer.startswith(b"HTTP/1.1 413 ")
    finally:
        await server.stop()


async def test_pipelined_requests_are_answered_in_order(tmp_path: pathlib.Path) -> None:
    server, context = await _start(tmp_path, drain=0.0)
    try:
        two = b"GET /healthz HTTP/1.1\r\n\r\nGET /nothing HTTP/1.1\r\nConnection: close\r\n\r\n"
        answer = await asyncio.to_thread(_exchange, server.port, context, two)
        first, _, second = answer.partition(b"ok")
        assert first.startswith(b"HTTP/1.1 200 OK\r\n")
        assert second.startswith(b"HTTP/1.1 404 Not Found\r\n")
    finally:
        await server.stop()


async def test_idle_and_stalled_connections_are_closed(tmp_path: pathlib.Path) -> None:
    server, context = await _start(tmp_path, drain=0.0)
    try:
        idle = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=5)
        assert await asyncio.to_thread(_get, idle) == (200, None)
        stalled = http.client.HTTPSConnection("127.0.0.1", server.port, context=context)
        await asyncio.to_thread(stalled.connect)
        await asyncio.to_thread(stalled.send, b"POST /imageward-validate HTTP/1.1\r\n")
        await asyncio.sleep(0.2)
        assert len(server.connections) == 2
        now = time.monotonic()
        server._sweep(now + endpoints.REQUEST_TIMEOUT + 1)  # the stalled request only
        await asyncio.sleep(0.2)
        assert len(server.connections) == 1
        server._sweep(now + endpoints.KEEPALIVE_TIMEOUT + 1)
        await asyncio.sleep(0.2)
        assert not server.connections
        idle.close()
        stalled.close()
    finally:
        await server.stop()


def _open(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    import socket

    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return context.wrap_socket(raw, server_hostname="localhost")


async def test_empty_lines_do_not_keep_an_idle_connection_open(tmp_path: pathlib.Path) -> None:
    # RFC 9112 lets a server skip empty lines before a request; they must not count as
    # activity, or two bytes a minute would hold a socket for ever.
    server, context = await _start(tmp_path, drain=0.0)
    try:
        client = await asyncio.to_thread(_open, server.port, context)
        await asyncio.sleep(0.2)
        (connection,) = server.connections
        opened = connection.last_active
        await asyncio.to_thread(client.sendall, b"\r\n\r\n")
        await asyncio.sleep(0.2)
        assert connection.last_active == opened
        server._sweep(opened + endpoints.KEEPALIVE_TIMEOUT + 1)
        await asyncio.sleep(0.2)
        assert not server.connections
        client.close()
    finally:
        await server.stop()


def _refused(port: int, context: ssl.SSLContext) -> bool:
    """Whether a new connection is closed without an answer to its request."""
    try:
        fourth = _open(port, context)
    except (ssl.SSLError, OSError):
        return True
    with fourth:
        try:
            fourth.settimeout(2)
            fourth.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
            return fourth.recv(100) == b""
        except (ssl.SSLError, OSError):
            return True


async def test_at_the_connection_cap_the_longest_idle_connection_makes_room(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(endpoints, "MAX_CONNECTIONS", 2)
    server, context = await _start(tmp_path, drain=0.0)
    try:
        first = await asyncio.to_thread(_open, server.port, context)
        await asyncio.sleep(0.1)
        second = await asyncio.to_thread(_open, server.port, context)
        await asyncio.sleep(0.1)
        # The second starts a request and stalls in it: busy, not idle.
        await asyncio.to_thread(second.sendall, b"POST /imageward-validate HTTP/1.1\r\n")
        await asyncio.sleep(0.1)
        third = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=5)
        assert await asyncio.to_thread(_get, third) == (200, None)
        first.settimeout(2)
        assert await asyncio.to_thread(first.recv, 100) == b""  # closed for the newcomer
        assert len(server.connections) == 2

        # Now neither is idle (a stalled request each): a fourth is refused, the two kept.
        await asyncio.to_thread(third.send, b"POST /imageward-validate HTTP/1.1\r\n")
        await asyncio.sleep(0.1)
        assert await asyncio.to_thread(_refused, server.port, context)
        assert len(server.connections) == 2
        for client in (first, second):
            client.close()
        third.close()
    finally:
        await server.stop()


async def test_a_client_that_reads_no_answers_is_not_served_more(tmp_path: pathlib.Path) -> None:
    # Pipelined requests from a client that never reads: once the answers it has not
    # read pass the write buffer's high-water mark, no more requests are started (the
    # answers would pile up in the webhook's memory).
    import socket

    server, context = await _start(tmp_path, drain=0.0)
    try:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.settimeout(5)
        await asyncio.to_thread(raw.connect, ("127.0.0.1", server.port))
        client = await asyncio.to_thread(context.wrap_socket, raw, server_hostname="localhost")
        await asyncio.sleep(0.2)
        (connection,) = server.connections
        assert connection.transport is not None
        # The kernel's own buffers would take megabytes first: make them small.
        server_socket = connection.transport.get_extra_info("socket")
        server_socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        client.setblocking(False)
        request = b"GET /nothing-here HTTP/1.1\r\n\r\n"
        sent = 0
        deadline = time.monotonic() + 10
        while sent < 8 * 1024 * 1024 and time.monotonic() < deadline:
            try:
                sent += client.send(request * 256)
            except (ssl.SSLWantWriteError, BlockingIOError):
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert connection.writing_paused
        transport = connection.transport
        assert transport is not None
        held = transport.get_write_buffer_size()
        assert held < 1024 * 1024, f"{held} bytes of answers held for a client that reads none"
        server._sweep(connection.last_active + endpoints.REQUEST_TIMEOUT + 1)
        await asyncio.sleep(0.2)
        assert not server.connections
        client.close()
    finally:
        await server.stop()


@pytest.mark.parametrize("version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_an_admission_is_answered_in_the_reviews_own_version_with_its_uid(version: str) -> None:
    # The common answer is written without building dicts: it must still be the
    # AdmissionReview the apiserver parses, whatever characters the uid holds.
    review = samples.review(subResource="status", uid='a"b\\c\u00e9')
    review["apiVersion"] = version
    body = json.dumps(review).encode()
    state = runtime.Runtime(settings.Settings(), None, None)  # type: ignore[arg-type]
    request = http11.Request("POST", "/imageward-validate", (1, 1), {}, body)
    reply = asyncio.run(endpoints.respond(state, request))
    assert reply.status == 200
    assert json.loads(reply.body) == {
        "apiVersion": version,
        "kind": "AdmissionReview",
        "response": {"uid": 'a"b\\c\u00e9', "allowed": True},
    }
