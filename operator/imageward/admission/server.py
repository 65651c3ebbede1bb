"""Kopf's webhook server, with AdmissionReview bodies checked before Kopf reads them.

Kopf answers 400 to invalid JSON, but a well-formed JSON body of the wrong shape (a list,
a null request, a non-object `object`) reaches its internals and ends as a 500, and so do bytes that
are not UTF-8. Both are answered 400 here, naming what was wrong.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp.web
import kopf

from imageward import errors
from imageward.admission import reviews


class MalformedReviewBody(json.JSONDecodeError):
    """Raised so Kopf's server maps it to 400 Bad Request, like any unreadable body."""

    def __init__(self, error: errors.MalformedReviewError) -> None:
        super().__init__(str(error), "", 0)


class WebhookServer(kopf.WebhookServer):
    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        async def guarded(request: Any, **kwargs: Any) -> Any:
            try:
                reviews.parse_review(request)
            except errors.MalformedReviewError as e:
                raise MalformedReviewBody(e) from e
            return await fn(request, **kwargs)

        async for config in super().__call__(guarded):
            yield config

    @staticmethod
    async def _serve(fn: kopf.WebhookFn, request: aiohttp.web.Request) -> aiohttp.web.Response:
        # Kopf decodes the body as text before parsing: bytes that are not UTF-8 would
        # escape its error mapping as a 500.
        try:
            return await kopf.WebhookServer._serve(fn, request)
        except UnicodeDecodeError as e:
            raise aiohttp.web.HTTPBadRequest(reason=f"body is not UTF-8 JSON: {e.reason}") from e
