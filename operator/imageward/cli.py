"""The `imageward` console script: one entry point, one subcommand per job."""

from __future__ import annotations

import functools
import sys

from imageward import __version__, commands

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (PEP 781)

if TYPE_CHECKING:
    # At run time imported by build_parser: `check` in its common spellings (nearly
    # every run) is parsed by `_parse_check`, without argparse and its gettext.
    import argparse
    import types
    from collections.abc import Sequence

EXIT_OK = 0
EXIT_DENIED = 1
EXIT_USAGE = 2


def _cmd_run(args: argparse.Namespace) -> int:
    from imageward.commands import run

    return run.run(standalone=args.standalone, liveness=args.liveness, verbose=args.verbose)


def _cmd_dev(args: argparse.Namespace) -> int:
    from imageward.commands import dev

    return dev.run(nodes=args.nodes, state_dir=args.state_dir, real_node=args.real_node)


# Subcommands whose arguments live in `imageward.commands.<name>` (`add_arguments` and
# `run`). Only the module of the command being run is imported: `check` must not pay for
# the agent's containerd client or the registry transport to print its help.
_MODULE_COMMANDS = {
    "check": "evaluate images against ImagePolicy files, no cluster needed",
    "plan": "print the layer plan for a set of images",
    "agent": "the node agent of PrePull Layers mode",
}


def _terminal_columns() -> int:
    """`shutil.get_terminal_size().columns`, as argparse asks it for the help width,
    without importing shutil (and its bz2, lzma and zlib): argparse makes a formatter
    for every argument it adds, so `imageward check` would import it on every run."""
    import os

    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            size = os.get_terminal_size(sys.__stdout__.fileno())  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            size = os.terminal_size((80, 24))
        columns = size.columns or 80
    return columns


@functools.cache
def _help_formatter() -> type[argparse.HelpFormatter]:
    """argparse's formatter, its default width found without shutil (the class is made
    at first use, as argparse is imported)."""
    import argparse

    class HelpFormatter(argparse.HelpFormatter):
        def __init__(
            self,
            prog: str,
            indent_increment: int = 2,
            max_help_position: int = 24,
            width: int | None = None,
        ) -> None:
            if width is None:
                width = _terminal_columns() - 2
            super().__init__(prog, indent_increment, max_help_position, width)

    return HelpFormatter


def _named_command(argv: Sequence[str]) -> str | None:
    """The subcommand `argv` names: its first word not starting with `-` (the top-level
    options take no values)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; with `argv`, only the arguments of the command it names are
    added (and only that command's module imported). Help and errors are the same."""
    import argparse
    import importlib

    formatter = _help_formatter()
    parser = argparse.ArgumentParser(
        prog="imageward",
        description="Keep container images verifiable, small and fast to start.",
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"imageward {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # Commands whose module says SETS_UP_LOGGING do it themselves, when they need it.
    parser.set_defaults(sets_up_logging=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser(
        "run",
        help="run the operator (admission webhooks, controllers, metrics)",
        formatter_class=formatter,
    )
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
        formatter_class=formatter,
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

    named = None if argv is None else _named_command(argv)
    for name, help_text in _MODULE_COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, formatter_class=formatter)
        if argv is None or name == named:
            module = importlib.import_module(f"imageward.commands.{name}")
            module.add_arguments(command_parser)
            command_parser.set_defaults(
                handler=module.run, sets_up_logging=getattr(module, "SETS_UP_LOGGING", False)
            )
    return parser


def _parse_check(argv: Sequence[str]) -> types.SimpleNamespace | None:
    """The attributes `build_parser(argv).parse_args(argv)` gives a `check` whose
    arguments are spelled the common way (`check.parse_arguments`), top-level options
    only `-v` or `--verbose`; None for any other argv (argparse parses it, with its help
    and errors). `tests/unit/commands/test_check_argv.py` runs both over the same argv."""
    verbose = False
    index = 0
    while index < len(argv) and argv[index] in ("-v", "--verbose"):
        verbose = True
        index += 1
    if index == len(argv) or argv[index] != "check":
        return None
    from imageward.commands import check

    parsed = check.parse_arguments(argv[index + 1 :])
    if parsed is None:
        return None
    import types  # loaded already (enum imports it)

    return types.SimpleNamespace(
        verbose=verbose,
        command="check",
        sets_up_logging=check.SETS_UP_LOGGING,
        **parsed,
        handler=check.run,
    )


#: Commands that run once and end (in CI pipelines, once per image): they leave without
#: the interpreter's teardown (see `_leave`).
_ONE_SHOT = frozenset({"check", "plan"})


def _dispatch(argv: Sequence[str] | None) -> tuple[int, bool]:
    """Run the command `argv` names: its exit code, and whether it is one-shot."""
    if argv is None:
        argv = sys.argv[1:]
    args: argparse.Namespace | types.SimpleNamespace | None = _parse_check(argv)
    if args is None:
        args = build_parser(argv).parse_args(argv)
    if not args.sets_up_logging:
        commands.set_up_logging(args.verbose)
    result: int = args.handler(args)
    return result, args.command in _ONE_SHOT


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command in this process and return its exit code (tests, embedding)."""
    return _dispatch(argv)[0]


def entry() -> None:
    """The `imageward` console script and `python -m imageward`."""
    code, one_shot = _dispatch(None)
    if one_shot:
        _leave(code)
    sys.exit(code)


def _leave(code: int) -> None:
    """Exit at once, once what was written is flushed.

    The interpreter's teardown frees every module and object the checker's stack made:
    about a fifth of `imageward check` on one image (20 of 118 ms measured), paid once per
    image in a pipeline and seen by no one. A one-shot command has nothing left for it to
    do: its event loop and threads are closed by `asyncio.run`, its files by `with`, and
    it starts no children. What Python's own exit would do that matters is done here:
    logging's handlers and the standard streams are flushed, and a stream that cannot be
    flushed (a closed pipe) makes a successful exit 120, Python's status for it.
    """
    import os

    logging = sys.modules.get("logging")
    if logging is not None:
        logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        code = code or 120
    os._exit(code)


if __name__ == "__main__":
    entry()
