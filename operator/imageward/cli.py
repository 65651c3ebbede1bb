"""The `imageward` console script: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from imageward import __version__

EXIT_OK = 0
EXIT_DENIED = 1
EXIT_USAGE = 2


def _cmd_run(args: argparse.Namespace) -> int:
    from imageward import operator_runner

    return operator_runner.run(
        standalone=args.standalone, liveness=args.liveness, verbose=args.verbose
    )


def _cmd_dev(args: argparse.Namespace) -> int:
    from imageward import dev

    return dev.run(nodes=args.nodes, state_dir=args.state_dir, real_node=args.real_node)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imageward",
        description="Keep container images verifiable, small and fast to start.",
    )
    parser.add_argument("--version", action="version", version=f"imageward {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run the operator (admission webhooks, controllers, metrics)")
    run.add_argument(
        "--standalone", action="store_true", help="no peering (a single replica, or tests)"
    )
    run.add_argument(
        "--liveness", default=None, help="liveness endpoint, e.g. http://0.0.0.0:8081/healthz"
    )
    run.set_defaults(handler=_cmd_run)

    dev = sub.add_parser(
        "dev",
        help="start a local control plane, registry, demo images and the operator",
    )
    dev.add_argument("--nodes", type=int, default=3, help="kwok nodes to simulate (default 3)")
    dev.add_argument(
        "--state-dir",
        default=None,
        help="where the kubeconfig and logs go (default ~/.imageward/dev)",
    )
    dev.add_argument(
        "--real-node",
        action="store_true",
        help="also start one real kubelet node (kubelet, kube-proxy, containerd with CRI, "
        "CNI bridge) so real pods run. Needs root, and changes this machine's kernel "
        "settings (sysctls), iptables, mounts, cgroups and network interfaces while it runs; "
        "stopping restores them, and a run that crashed is cleaned up by the next one",
    )
    dev.set_defaults(handler=_cmd_dev)

    from imageward.commands import agent, check, plan

    check_parser = sub.add_parser(
        "check", help="evaluate images against ImagePolicy files, no cluster needed"
    )
    check.add_arguments(check_parser)
    check_parser.set_defaults(handler=check.run)

    plan_parser = sub.add_parser("plan", help="print the layer plan for a set of images")
    plan.add_arguments(plan_parser)
    plan_parser.set_defaults(handler=plan.run)

    agent_parser = sub.add_parser("agent", help="the node agent of PrePull Layers mode")
    agent.add_arguments(agent_parser)
    agent_parser.set_defaults(handler=agent.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
