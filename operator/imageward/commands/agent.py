"""`imageward agent`: the node agent of PrePull Layers mode (see `imageward.prepull.agent`).

Exit statuses: 0 when stopped by SIGTERM/SIGINT (or, with `--once`, every planned blob
is held), 1 with `--once` when a blob could not be fetched, 2 for unusable options or
plan files (with `--once`; the long-running agent waits for a usable plan instead).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import pathlib
import re
import sys
from typing import TYPE_CHECKING

from imageward import errors, settings
from imageward.policy import quantities
from imageward.prepull import daemonset

if TYPE_CHECKING:
    from imageward.prepull import agent

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

#: A whole blob is one request: the per-request timeout gives way to each blob's deadline.
_REQUEST_TIMEOUT = 24 * 3600.0
_DURATION_RE = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<unit>s|m|h|d)?")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


class UsageError(errors.ImagewardError):
    pass


def parse_duration(text: str) -> float:
    """Seconds from `90`, `90s`, `15m`, `24h` or `7d`."""
    match = _DURATION_RE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration such as 30s, 15m, 24h")
    return float(match["number"]) * _UNITS[match["unit"]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plan",
        default=daemonset.PLAN_PATH,
        metavar="FILE",
        help=f"the plan JSON of the PrePull (default {daemonset.PLAN_PATH})",
    )
    parser.add_argument(
        "--containerd-socket",
        default=os.environ.get("CONTAINERD_ADDRESS", daemonset.CONTAINERD_SOCKET),
        metavar="PATH",
        help="containerd's gRPC socket (default $CONTAINERD_ADDRESS or "
        f"{daemonset.CONTAINERD_SOCKET})",
    )
    parser.add_argument(
        "--concurrency", type=int, default=3, metavar="N", help="blobs fetched at once (3)"
    )
    parser.add_argument(
        "--max-bytes-per-second",
        default=None,
        metavar="QUANTITY",
        help="bandwidth cap shared by all fetches, e.g. 50Mi (default unlimited)",
    )
    parser.add_argument(
        "--listen",
        default=f"0.0.0.0:{daemonset.AGENT_PORT}",
        metavar="HOST:PORT",
        help="where /readyz and /metrics are served (not with --once)",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="apply the plan, print the progress JSON and exit (tests, benchmarks)",
    )
    parser.add_argument(
        "--poll-interval",
        default="5s",
        metavar="DURATION",
        help="how often the plan file is checked for changes (5s)",
    )
    parser.add_argument(
        "--resync-interval",
        default="10m",
        metavar="DURATION",
        help="how often a held plan is checked again (blobs removed by hand come back) (10m)",
    )
    parser.add_argument(
        "--lease-ttl",
        default="24h",
        metavar="DURATION",
        help="containerd.io/gc.expire of the lease, renewed while the agent runs; 0: never "
        "expires (24h)",
    )
    parser.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="registry reached over plain HTTP (repeatable; adds to "
        "$IMAGEWARD_INSECURE_REGISTRIES)",
    )
    parser.add_argument(
        "--node",
        default=os.environ.get("NODE_NAME"),
        help="node name shown in the progress (default $NODE_NAME)",
    )


def build_options(args: argparse.Namespace) -> agent.Options:
    # Imported here: aiohttp and grpc cost a quarter second every other command skips.
    from imageward.prepull import agent

    try:
        config = settings.from_env()
    except errors.ConfigurationError as e:
        raise UsageError(str(e)) from e
    rate = None
    if args.max_bytes_per_second is not None:
        try:
            rate = quantities.parse_bytes(args.max_bytes_per_second)
        except errors.ImagewardError as e:
            raise UsageError(f"--max-bytes-per-second {args.max_bytes_per_second!r}: {e}") from e
        if rate <= 0:
            raise UsageError("--max-bytes-per-second must be positive")
    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    durations = {}
    for flag in ("poll_interval", "resync_interval", "lease_ttl"):
        try:
            durations[flag] = parse_duration(getattr(args, flag))
        except ValueError as e:
            raise UsageError(f"--{flag.replace('_', '-')}: {e}") from e
    if not args.once:
        try:
            agent.parse_listen(args.listen)
        except ValueError as e:
            raise UsageError(str(e)) from e
    insecure = tuple(dict.fromkeys((*config.registry.insecure_registries, *args.insecure_registry)))
    registry = dataclasses.replace(
        config.registry,
        insecure_registries=insecure,
        request_timeout=max(config.registry.request_timeout, _REQUEST_TIMEOUT),
    )
    return agent.Options(
        plan_path=pathlib.Path(args.plan),
        socket=args.containerd_socket.removeprefix("unix://"),
        concurrency=args.concurrency,
        max_bytes_per_second=float(rate) if rate else None,
        listen=args.listen,
        once=args.once,
        poll_interval=max(0.1, durations["poll_interval"]),
        resync_interval=max(1.0, durations["resync_interval"]),
        lease_ttl=durations["lease_ttl"],
        node=args.node,
        registry=registry,
    )


def run(args: argparse.Namespace) -> int:
    from imageward.prepull import agent

    try:
        options = build_options(args)
        if options.once:
            complete, progress = asyncio.run(agent.run_once(options))
            json.dump(progress.to_json(), sys.stdout, indent=2)
            sys.stdout.write("\n")
            return EXIT_OK if complete else EXIT_FAILED
        asyncio.run(agent.run_forever(options))
        return EXIT_OK
    except (UsageError, agent.PlanFileError) as e:
        print(f"imageward agent: {e}", file=sys.stderr)
        return EXIT_USAGE
    except errors.ImagewardError as e:
        print(f"imageward agent: {e}", file=sys.stderr)
        return EXIT_FAILED
