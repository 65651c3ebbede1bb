"""Run the Kopf operator in this process (`imageward run`)."""

from __future__ import annotations

import asyncio
import logging
import os
import random

import kopf

from imageward import errors, settings

logger = logging.getLogger(__name__)


def _priority() -> int:
    configured = os.environ.get("IMAGEWARD_PEERING_PRIORITY")
    if configured:
        return int(configured)
    return random.SystemRandom().randint(1, 2**31 - 1)


def run(*, standalone: bool, liveness: str | None, verbose: bool) -> int:
    try:
        config = settings.from_env()
    except errors.ConfigurationError as e:
        logger.error("%s", e)
        return 2
    # Importing the handlers module registers every @kopf.on handler.
    from imageward import main  # noqa: F401

    # Kopf installs its own root handler; drop the one `cli.main` added, or every line
    # is written twice. Per-request lines (aiohttp's access log, Kopf's "Webhook ...
    # succeeded") cost a fifth of a warm admission's CPU: only with --verbose.
    logging.getLogger().handlers.clear()
    kopf.configure(verbose=verbose)
    if not verbose:
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    asyncio.run(
        kopf.operator(
            clusterwide=True,
            standalone=standalone,
            # Kopf pauses every peer when two share a priority: each replica takes its own,
            # so the highest one runs the controllers and the other stands by.
            priority=_priority(),
            liveness_endpoint=liveness,
            memo=kopf.Memo(settings=config),
        )
    )
    return 0
