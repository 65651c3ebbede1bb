"""The HTTPS server the apiserver calls: `/imageward-validate` and `/imageward-pin-digest`.

Served directly rather than through Kopf's generic admission machinery (which cost a
third of a warm review's CPU): one aiohttp application, the body checked by
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
import json
import logging
import pathlib
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from imageward import errors, runtime, settings
from imageward.admission import handler, reviews, webhooks

logger = logging.getLogger(__name__)

#: The apiserver sends the whole object (and the old one): a few hundred KiB at most.
MAX_BODY_BYTES = 8 * 1024 * 1024
CERT_CHECK_INTERVAL = 5.0  # seconds between looks at the certificate files

Decide = Callable[[runtime.Runtime, reviews.AdmissionRequest], Awaitable[handler.Answer]]

ROUTES: dict[str, Decide] = {
    f"/{webhooks.VALIDATE_ID}": handler.validate,
    f"/{webhooks.PIN_DIGEST_ID}": handler.pin,
}


def build_app(
    state: runtime.Runtime, *, draining: Callable[[], bool] = lambda: False
) -> web.Application:
    """The webhook application. While `draining()`, every answer says `Connection: close`:
    the apiserver sends its next review on a new connection (to a replica that stays)
    instead of on one this server is about to shut."""

    @web.middleware
    async def close_when_draining(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        response = await handler(request)
        if draining():
            response.force_close()
        return response

    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[close_when_draining])

    def endpoint(decide: Decide) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def serve(request: web.Request) -> web.Response:
            raw = await request.read()
            try:
                body: Any = json.loads(raw)
            except (ValueError, UnicodeDecodeError, RecursionError) as e:
                return _bad_request(f"body is not JSON: {e}")
            try:
                review = reviews.parse_review(body)
            except errors.MalformedReviewError as e:
                return _bad_request(str(e))
            answer = await decide(state, review)
            return web.json_response(
                {
                    "apiVersion": body["apiVersion"],
                    "kind": "AdmissionReview",
                    "response": answer.to_response(review["uid"]),
                },
                dumps=_dumps,
            )

        return serve

    for path, decide in ROUTES.items():
        app.router.add_post(path, endpoint(decide))
    app.router.add_get("/healthz", _healthz)
    return app


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _bad_request(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


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
        self._runner: web.AppRunner | None = None
        self._watch: asyncio.Task[None] | None = None

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
        app = build_app(self.state, draining=lambda: self.draining)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.context)
        await site.start()
        self._watch = asyncio.create_task(self._watch_certificates())
        logger.info("admission webhook on https://%s:%d", self.host, self.port)

    async def _watch_certificates(self) -> None:
        while True:
            await asyncio.sleep(CERT_CHECK_INTERVAL)
            try:
                if self._reload():
                    logger.info("serving certificate reloaded from %s", self.certfile)
            except (OSError, ssl.SSLError) as e:  # half-written files: try again next time
                logger.warning("could not reload the serving certificate: %s", e)

    async def stop(self) -> None:
        """Drain (see `drain_seconds`), then stop listening and close every connection."""
        if self.drain_seconds > 0 and self._runner is not None and not self.draining:
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
        if self._runner is not None:
            await self._runner.cleanup()
