"""One module per `imageward` subcommand; `cli.py` parses arguments and dispatches."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (PEP 781)

if TYPE_CHECKING:
    import argparse  # a run of `imageward check` parses its arguments without it


def add_registry_arguments(parser: argparse.ArgumentParser) -> None:
    """--insecure-registry and --docker-config, the same in every command that pulls."""
    parser.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="registry reached over plain HTTP (repeatable)",
    )
    parser.add_argument(
        "--docker-config", metavar="FILE", help="docker config.json with credentials"
    )


def set_up_logging(verbose: bool) -> None:
    """The log format of every command; debug lines with `-v`."""
    import logging

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
