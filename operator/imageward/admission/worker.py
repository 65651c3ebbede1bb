"""The admission webhook in a process of its own (`IMAGEWARD_ADMISSION_PROCESS=own`).

Started and supervised by `admission.process` in the operator's container:

    python -m imageward.admission.worker --certfile F --keyfile F --control SOCKET

Why a process: the controllers (PrePull status, background scans, their caches) share an
operator's event loop, its GIL and its garbage collections; at 1,000 nodes a full
collection over what their caches hold stalls every review waiting meanwhile. Here a
review waits for nothing but other reviews.

It needs no Kopf: it builds its own `Runtime` from the same environment, loads every
ImagePolicy before it listens (no fail-open window), then follows policies, the key
material they reference and ImagePolicyExceptions with watches of its own, as any
replica does. The serving certificate is the parent's files, reloaded when they change.

On a Unix socket only the parent can reach (its directory is 0700) it answers
`GET /healthz` (200 once it serves) and `GET /metrics` (its own counters, which the
parent merges into its `/metrics`).

It ends on SIGTERM, after the drain (`IMAGEWARD_SHUTDOWN_DRAIN`), or at once when its
standard input closes: the parent died, and an orphan must not keep the webhook port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import pathlib
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from imageward import errors, metrics, runtime, settings
from imageward.admission import endpoints

logger = logging.getLogger(__name__)

#: Seconds an orphaned worker allows itself to close before it exits regardless.
ORPHAN_EXIT_TIMEOUT = 2.0


def build_control_app() -> web.Application:
    """What the parent asks over the control socket."""

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def metrics_text(request: web.Request) -> web.Response:
        return web.Response(
            body=metrics.openmetrics_exposition(), content_type="application/openmetrics-text"
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_text)
    return app


async def _parent_gone() -> None:
    """Returns when standard input reaches its end: the parent holds the other end of
    the pipe, and the kernel closes it when the parent exits, however it exits."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass


async def serve(
    config: settings.Settings, *, certfile: pathlib.Path, keyfile: pathlib.Path, control: str
) -> None:
    # Watched from the start: a worker orphaned while it loads policies must not go on
    # to bind the webhook port.
    orphaned = asyncio.ensure_future(_parent_gone())
    serving = False

    def exit_if_orphaned_early(_: object) -> None:
        if not serving:
            os._exit(1)

    orphaned.add_done_callback(exit_if_orphaned_early)
    state = runtime.Runtime.build(config)
    policy_task: asyncio.Task[None] | None = None
    server: endpoints.Server | None = None
    control_runner: web.AppRunner | None = None
    try:
        resource_version = await state.load_all_policies()
        logger.info("admission process: loaded %d ImagePolicies", len(state.store.snapshot()))
        policy_task = asyncio.create_task(state.follow_policies(resource_version))
        await state.exceptions.start(state.kube, max_items=config.scan.cache_max_objects)
        server = endpoints.Server.for_settings(
            state, config.admission, certfile=certfile, keyfile=keyfile
        )
        await server.start()
        control_runner = web.AppRunner(build_control_app(), access_log=None)
        await control_runner.setup()
        await web.UnixSite(control_runner, control).start()
        # As the operator does at the end of its start-up: what exists now lives as long
        # as the process, and later full collections need not walk it.
        gc.collect()
        gc.freeze()
        serving = True

        loop = asyncio.get_running_loop()
        terminate = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, terminate.set)
        terminating = asyncio.ensure_future(terminate.wait())
        await asyncio.wait([orphaned, terminating], return_when=asyncio.FIRST_COMPLETED)
        terminating.cancel()
        if orphaned.done():
            logger.error("admission process: the operator is gone; stopping")
            server.drain_seconds = 0.0
            await asyncio.wait_for(server.stop(), ORPHAN_EXIT_TIMEOUT)
            return
        orphaned.cancel()
        await server.stop()
    finally:
        if control_runner is not None:
            await control_runner.cleanup()
        if policy_task is not None:
            policy_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await policy_task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(state.close(), ORPHAN_EXIT_TIMEOUT)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imageward.admission.worker")
    parser.add_argument("--certfile", type=pathlib.Path, required=True)
    parser.add_argument("--keyfile", type=pathlib.Path, required=True)
    parser.add_argument("--control", required=True, help="Unix socket for the parent")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    from imageward import commands

    commands.set_up_logging(args.verbose)
    if not args.verbose:
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        config = settings.from_env()
    except errors.ConfigurationError as e:
        logger.error("%s", e)
        return 2
    asyncio.run(serve(config, certfile=args.certfile, keyfile=args.keyfile, control=args.control))
    return 0


if __name__ == "__main__":
    sys.exit(main())
