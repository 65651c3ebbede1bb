"""The registry client's only I/O: one aiohttp session, one request at a time, bounded.

Thin on purpose: it sends what the client built and returns status, headers and a
body read in chunks under a byte cap (and hashed on the way when asked). It never
follows redirects (the client does, so credentials never reach another host), never
retries (the client does, under its deadline) and knows nothing of auth or manifests.
Every request is recorded in `imageward_registry_requests_total` and
`imageward_registry_request_duration_seconds`.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from imageward import records
from imageward.registry import manifests, model

if TYPE_CHECKING:
    import aiohttp

# aiohttp (and yarl) are imported by the first request, not here: a one-shot
# `imageward check` whose images no policy matches never sends one, and aiohttp's import
# is the largest part of its start-up. Later requests find it in sys.modules.

USER_AGENT = "imageward/0.1 (+https://imageward.io)"
_CHUNK = 64 * 1024

_set = object.__setattr__  # how a frozen Record's __init__ sets its fields


class TransportError(Exception):
    """A request that got no usable answer; the client adds registry and reference."""

    retryable = True
    code = "error"  # the `code` label of the request metric


class ConnectError(TransportError):
    """No connection, or the connection broke before the answer was complete."""


class TLSError(TransportError):
    """The registry's certificate is not trusted; trying again will not change that."""

    retryable = False


class RequestTimeout(TransportError):
    """No complete answer within the per-request timeout."""

    code = "timeout"


class BodyTooLarge(TransportError):
    """The answer is larger than the caller allows; nothing past the cap was read."""

    retryable = False
    code = "too_large"

    def __init__(self, message: str, *, size: int | None, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class Headers(Protocol):
    """An answer's header fields as the client reads them: several values per name, names
    compared case-insensitively. aiohttp's `multidict.CIMultiDictProxy` is one (this
    transport's), `streams.Headers` another (the one-shot transport's, without multidict).
    """

    def get(self, name: str, /) -> str | None:
        """The first value of `name`, or None."""
        ...

    def getall(self, name: str, default: list[str], /) -> list[str]:
        """Every value of `name` in order, or `default` when there is none."""
        ...


class Response(records.Record, hidden=("body",)):
    """One answer: status, where it came from, its headers and (capped) body."""

    __slots__ = ("body", "digest", "headers", "status", "url")
    status: int
    url: str
    headers: Headers
    body: bytes
    digest: model.Digest | None
    """The body's digest, when the request asked for it to be hashed while streaming."""

    def __init__(
        self,
        status: int,
        url: str,
        headers: Headers,
        body: bytes,
        digest: model.Digest | None = None,
    ) -> None:
        _set(self, "status", status)
        _set(self, "url", url)
        _set(self, "headers", headers)
        _set(self, "body", body)
        _set(self, "digest", digest)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def header_all(self, name: str) -> list[str]:
        return self.headers.getall(name, [])


class SinkError(Exception):
    """The sink refused a chunk; `error` is what it raised. Never retried."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class BodySink(Protocol):
    """Where a streamed answer's body goes instead of memory (a blob into containerd).

    `begin()` comes before the first chunk of every 2xx answer: a retried request starts
    over, so the sink drops what an earlier attempt gave it.
    """

    async def begin(self) -> None: ...

    async def write(self, chunk: bytes) -> None: ...


def build_ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    """The system trust store plus the extra CAs of `ca_bundle` (a private registry's CA)."""
    context = ssl.create_default_context()
    if ca_bundle:
        context.load_verify_locations(cafile=ca_bundle)
    return context


class Transport:
    """One aiohttp session for all registries; create inside the event loop, `close()` it."""

    #: Whether the trust store is loaded when the transport is made (else at the first
    #: HTTPS connection). The operator makes its one transport at start, where a CA
    #: bundle it cannot read should stop it.
    tls_at_start: ClassVar[bool] = True

    def __init__(
        self,
        *,
        max_concurrency: int = 64,
        ca_bundle: str | None = None,
        user_agent: str = USER_AGENT,
    ) -> None:
        self._max_concurrency = max_concurrency
        self._ca_bundle = ca_bundle
        self._ssl_context = build_ssl_context(ca_bundle) if self.tls_at_start else None
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    @property
    def _ssl(self) -> ssl.SSLContext:
        """The TLS context of every HTTPS connection."""
        if self._ssl_context is None:
            self._ssl_context = build_ssl_context(self._ca_bundle)
        return self._ssl_context

    def _get_session(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._closed:
            raise RuntimeError("the registry transport is closed")
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_concurrency, ssl=self._ssl, ttl_dns_cache=60
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                # Deadlines are ours (asyncio.timeout per request and per lookup).
                timeout=aiohttp.ClientTimeout(total=None),
                # Cookies from one registry have no business in requests to another.
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": self._user_agent},
                trust_env=False,
            )
        return self._session

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

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
        sink: BodySink | None = None,
    ) -> Response:
        """Send one request; read at most `max_bytes` of body within `time_limit` seconds.

        `hash_as`: hash the body while it streams with that digest's algorithm (the
        response's `digest`). `sink`: a 2xx answer's body goes there chunk by chunk and
        the response's `body` is empty (other answers are read into memory as usual).
        Raises TransportError subclasses; an HTTP error status is not an exception here.
        """
        import aiohttp
        import yarl

        from imageward import metrics

        started = time.perf_counter()
        code: str = "error"
        received = 0
        expected: int | None = None
        try:
            async with asyncio.timeout(time_limit):
                session = self._get_session()
                async with session.request(
                    method,
                    yarl.URL(url, encoded=True),
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                ) as response:
                    code = str(response.status)
                    # A HEAD answer's Content-Length describes the body a GET would
                    # send; no body follows, so there is nothing to cap.
                    expected = None if method == "HEAD" else response.content_length
                    if expected is not None and expected > max_bytes:
                        raise BodyTooLarge(
                            f"answer is {expected} bytes, over the limit of {max_bytes}",
                            size=expected,
                            limit=max_bytes,
                        )
                    hasher: Any = manifests.build_hasher(hash_as) if hash_as else None
                    chunks: list[bytes] = []
                    streaming = sink is not None and 200 <= response.status < 300
                    if streaming and sink is not None and method != "HEAD":
                        await to_sink(sink.begin())
                    if method != "HEAD":
                        async for chunk in response.content.iter_chunked(_CHUNK):
                            received += len(chunk)
                            if received > max_bytes:
                                raise BodyTooLarge(
                                    f"answer exceeds the limit of {max_bytes} bytes "
                                    "(no Content-Length, cut while streaming)",
                                    size=None,
                                    limit=max_bytes,
                                )
                            if hasher is not None:
                                hasher.update(chunk)
                            if streaming and sink is not None:
                                await to_sink(sink.write(chunk))
                            else:
                                chunks.append(chunk)
                    digest = None
                    if hasher is not None and hash_as is not None:
                        algorithm = hash_as.partition(":")[0]
                        digest = model.Digest(f"{algorithm}:{hasher.hexdigest()}")
                    return Response(
                        status=response.status,
                        url=url,
                        headers=response.headers,
                        body=b"".join(chunks),
                        digest=digest,
                    )
        except TimeoutError as e:
            # A status code means the headers came and the body did not (a trickle).
            detail = (
                f" (headers came, body {received} of {expected or '?'} bytes)"
                if code != "error"
                else ""
            )
            code = RequestTimeout.code
            raise RequestTimeout(
                f"{method} {short_url(url)}: no complete answer within {time_limit:.2f}s{detail}"
            ) from e
        except BodyTooLarge as e:
            code = BodyTooLarge.code
            raise BodyTooLarge(
                f"{method} {short_url(url)}: {e}", size=e.size, limit=e.limit
            ) from None
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as e:
            raise TLSError(f"{method} {short_url(url)}: TLS failed: {e}") from e
        except aiohttp.ClientPayloadError as e:
            raise ConnectError(
                f"{method} {short_url(url)}: the answer broke off after {received} bytes ({e})"
            ) from e
        except (aiohttp.ClientError, OSError) as e:
            raise ConnectError(f"{method} {short_url(url)}: {type(e).__name__}: {e}") from e
        finally:
            metrics.observe_registry_request(registry, kind, code, time.perf_counter() - started)


async def to_sink(step: Awaitable[None]) -> None:
    """Await a sink's step; its failure is a SinkError (the sink's, not the registry's)."""
    try:
        await step
    except Exception as e:
        raise SinkError(e) from e


def short_url(url: str, limit: int = 160) -> str:
    """A URL for messages: without its query (signed blob URLs carry credentials there)."""
    text = url.split("?", 1)[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"
