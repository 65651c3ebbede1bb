"""`imageward agent`: the node agent of PrePull Layers mode (see `imageward.prepull.agent`
and `imageward.prepull.supervisor`).

`--from-cluster`: the chart's DaemonSet; plans from the plan ConfigMaps of the operator's
namespace, progress as conditions of the agent's own pod. `--plan FILE` (repeatable):
plan files. Exit statuses: 0 when stopped by SIGTERM/SIGINT (or, with `--once`, every
planned blob is held), 1 with `--once` when a blob could not be fetched, 2 for unusable
options or plan files (with `--once`; the long-running agent waits for a usable plan).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import re
import sys
from typing import TYPE_CHECKING

from imageward import errors, records, settings
from imageward.policy import quantities
from imageward.prepull import daemonset

if TYPE_CHECKING:
    from imageward.prepull import agent

DEFAULT_KEY_PATH = "/etc/imageward/agent-key/key"

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
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--plan",
        action="append",
        default=[],
        metavar="FILE",
        help="a plan JSON file to apply (repeatable; `--once` takes one)",
    )
    source.add_argument(
        "--from-cluster",
        action="store_true",
        help="serve the plan ConfigMaps of --namespace that select this node and report "
        "each plan's progress as a condition of --pod (the chart's agent DaemonSet)",
    )
    parser.add_argument(
        "--namespace",
        default=os.environ.get("POD_NAMESPACE"),
        help="with --from-cluster: where the plans are, the operator's namespace "
        "(default $POD_NAMESPACE)",
    )
    parser.add_argument(
        "--pod",
        default=os.environ.get("POD_NAME"),
        help="with --from-cluster: this agent's pod, whose status gets the reports "
        "(default $POD_NAME)",
    )
    parser.add_argument(
        "--credentials-key",
        default=DEFAULT_KEY_PATH,
        metavar="FILE",
        help=f"with --from-cluster: the key that opens sealed pull credentials "
        f"(default {DEFAULT_KEY_PATH}, a file of the mounted key Secret)",
    )
    parser.add_argument(
        "--kubeconfig",
        default=None,
        metavar="FILE",
        help="with --from-cluster: a kubeconfig (default: the pod's ServiceAccount, "
        "else $KUBECONFIG)",
    )
    parser.add_argument(
        "--node-refresh",
        default="5m",
        metavar="DURATION",
        help="with --from-cluster: how often the Node's labels and taints are read again (5m)",
    )
    parser.add_argument(
        "--report-interval",
        default="10s",
        metavar="DURATION",
        help="with --from-cluster: least time between two progress-only reports (10s); "
        "a changed status or reason is reported at once",
    )
    parser.add_argument(
        "--max-plans",
        type=int,
        default=settings.MAX_AGENT_PLANS,
        metavar="N",
        help=f"with --from-cluster: most plans served at once ({settings.MAX_AGENT_PLANS})",
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
        help="how often plan files are read again, and the longest a cluster agent waits "
        "before it looks at its plans and reports again (5s)",
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
        help="this node's name: shown in the progress; with --from-cluster, the Node whose "
        "labels and taints select plans (default $NODE_NAME)",
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
    for flag in (
        "poll_interval",
        "resync_interval",
        "lease_ttl",
        "node_refresh",
        "report_interval",
    ):
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
    registry = records.replace(
        config.registry,
        insecure_registries=insecure,
        request_timeout=max(config.registry.request_timeout, _REQUEST_TIMEOUT),
    )
    cluster = None
    if args.from_cluster:
        if args.once:
            raise UsageError("--once applies a --plan file, not --from-cluster")
        if not args.namespace:
            raise UsageError("--from-cluster needs --namespace (or $POD_NAMESPACE)")
        if not args.node:
            raise UsageError("--from-cluster needs --node (or $NODE_NAME)")
        if not 1 <= args.max_plans <= settings.MAX_AGENT_PLANS:
            raise UsageError(f"--max-plans must be between 1 and {settings.MAX_AGENT_PLANS}")
        cluster = agent.ClusterOptions(
            namespace=args.namespace,
            pod=args.pod or None,
            key_path=pathlib.Path(args.credentials_key),
            kubeconfig=args.kubeconfig,
            node_refresh=max(1.0, durations["node_refresh"]),
            report_interval=max(0.0, durations["report_interval"]),
            max_plans=args.max_plans,
        )
    elif not args.plan:
        raise UsageError("name a plan (--plan FILE) or serve the cluster's (--from-cluster)")
    elif args.once and len(args.plan) != 1:
        raise UsageError("--once applies exactly one --plan file")
    return agent.Options(
        plan_paths=tuple(pathlib.Path(path) for path in args.plan),
        cluster=cluster,
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
    from imageward.prepull import agent, supervisor

    try:
        options = build_options(args)
        if options.once:
            complete, progress = asyncio.run(agent.run_once(options))
            json.dump(progress.to_json(), sys.stdout, indent=2)
            sys.stdout.write("\n")
            return EXIT_OK if complete else EXIT_FAILED
        asyncio.run(supervisor.run_forever(options))
        return EXIT_OK
    except (UsageError, agent.PlanFileError) as e:
        print(f"imageward agent: {e}", file=sys.stderr)
        return EXIT_USAGE
    except errors.ImagewardError as e:
        print(f"imageward agent: {e}", file=sys.stderr)
        return EXIT_FAILED
