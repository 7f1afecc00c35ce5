"""The ``thaw`` command: arguments, configuration, and the one place errors meet people.

Each package's ``cli.py`` adds its subcommands with ``register(subparsers)``; a subcommand
is ``func(args, console) -> int``. A ``ThawError`` prints one line and exits with its code;
anything else is a bug and prints its traceback.
"""

# ruff: noqa: E402 - the warm-up starts before the imports it reads ahead for
from __future__ import annotations

from . import warmup

warmup.start()  # before the imports below: a cold node reads their files in parallel

import argparse
import logging
import os
import re
import signal
import sys
import traceback

from blobstore import cli as blobstore_cli
from blobstore.errors import ThawError
from blobstore.retrying import DEFAULT_BUDGET
from fusefs import cli as fusefs_cli
from indexer import cli as indexer_cli
from placement import cli as placement_cli
from restorer import cli as restorer_cli

from . import extender as extender_cli
from .ui import Console

BUG_EXIT = 70
_LONG_WORD = re.compile(r"\S{201,}")


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that clean-up (``finally``, partial exports,
    temporary files) runs, as it does for Ctrl-C. A BaseException, like KeyboardInterrupt,
    so that no ``except Exception`` swallows it."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def shorten(message: str) -> str:
    """A message with every word over 200 characters (a hostile 5 KB path) cut in the
    middle, so the one line stays readable."""
    return _LONG_WORD.sub(lambda m: f"{m[0][:90]}...{m[0][-90:]}", message)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: an option given before the subcommand is not reset by the subparser's default.
    common.add_argument("--store", metavar="URL", default=argparse.SUPPRESS,
                        help="store URL: file:///DIR, s3://BUCKET/PREFIX (default: $THAW_STORE, "
                             "else ~/.local/share/thaw/store)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print results as JSON")
    common.add_argument("--store-timeout", metavar="SECONDS", type=float,
                        default=argparse.SUPPRESS,
                        help="how long one store call may take, retries included, before the "
                             "command gives up with exit 3 (a mount's read: EIO) (default 20)")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log what happens")
    parser = argparse.ArgumentParser(
        prog="thaw", parents=[common],
        description="Content-addressed, lazy-loading images for fast cold starts.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (indexer_cli, blobstore_cli, fusefs_cli, placement_cli, restorer_cli,
                   extender_cli):
        module.register(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warmup.wait()  # no thread of its own outlives this point (a background mount forks)
    for name, default in (("store", None), ("json", False), ("verbose", False),
                          ("store_timeout", DEFAULT_BUDGET)):
        if not hasattr(args, name):
            setattr(args, name, default)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="thaw: %(levelname)s: %(message)s")
    console = Console(json_output=args.json)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(args, console) or 0)
    except ThawError as exc:
        print(f"thaw: error: {shorten(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("thaw: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("thaw: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # keep Python's exit flush from failing again
        return 141
    except Exception:
        traceback.print_exc()
        print("thaw: internal error (a bug); please report the traceback above",
              file=sys.stderr)
        return BUG_EXIT


if __name__ == "__main__":
    sys.exit(main())
