"""`collie train | eval | serve | init-model | generate | expand-vocab | convert` (also `python -m
collie …`, also under torchrun). Each command is a module of `collie.commands`; this only
dispatches and turns errors into one line and an exit code."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional

from collie.commands import COMMANDS
from collie.config import ConfigError
from collie.data.records import DataError
from collie.distributed.peer_failure import PeerFailure
from collie.trainer.checkpoint import CheckpointError


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="collie", description=__doc__.split("\n\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_arguments(subparsers.add_parser(command.NAME, help=command.HELP))
    args = parser.parse_args(argv)
    run = {command.NAME: command.run for command in COMMANDS}[args.command]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        message = run(args)
    except (ConfigError, DataError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"collie: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk or a permission error while writing an export
        print(f"collie: error: {e.filename or ''}{': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        return 1
    except (FloatingPointError, PeerFailure) as e:
        print(f"collie: error: {e}", file=sys.stderr)
        return 1
    if message:
        print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
