"""One module per `imageward` subcommand; `cli.py` parses arguments and dispatches."""
