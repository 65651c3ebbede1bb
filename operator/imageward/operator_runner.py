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

    kopf.configure(verbose=verbose)
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
