"""The webhook server's stop: it drains before it shuts (loopback sockets only, no cluster).

Found on the real node: deleting a replica under admission load failed a review now and
then with `EOF` (the apiserver does not retry that), because the server shut keep-alive
connections the apiserver had just sent a review on. Draining answers on, each answer
saying `Connection: close`, so the apiserver's next review goes on a new connection.
"""

from __future__ import annotations

import asyncio
import http.client
import pathlib
import ssl
from typing import cast

from imageward import runtime
from imageward.admission import endpoints, tls
from imageward.localcluster import processes


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
