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
import importlib
import logging
import os
import re
import signal
import sys

from blobstore.errors import ThawError
from blobstore.store.retrying import DEFAULT_BUDGET
from blobstore.units import seconds

from .ui import Console

BUG_EXIT = 70
_LONG_WORD = re.compile(r"\S{201,}")
# Each package's subcommands, registered by its ``cli`` module, in the order help lists them.
CLI_MODULES = {
    "indexer.cli": ("push", "export", "cat"),
    "blobstore.ops.cli": ("ls", "inspect", "verify", "check", "rm", "tag", "gc", "serve"),
    "fusefs.cli": ("mount", "daemon", "warm", "umount", "stats"),
    "placement.cli": ("place", "extender"),
    "restorer.cli": ("snapshot", "restore"),
}
_VALUED = ("--store", "--store-timeout")  # the common options that take a value


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


class Parser(argparse.ArgumentParser):
    """argparse, saying a mistake in one line as every other error is (its usage lines are
    what ``-h`` shows)."""

    def error(self, message: str):  # type: ignore[override]
        print(f"thaw: error: {shorten(message)} (`{self.prog} -h` shows the usage)",
              file=sys.stderr)
        sys.exit(2)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand, or only of ``command``'s module when that names one
    (what a command line does: importing and building the others was ~15 ms of every
    start, a mount's above all; help and a mistyped command still see them all)."""
    common = Parser(add_help=False)
    # SUPPRESS: an option given before the subcommand is not reset by the subparser's default.
    common.add_argument("--store", metavar="URL", default=argparse.SUPPRESS,
                        help="store URL: file:///DIR, s3://BUCKET/PREFIX (default: $THAW_STORE, "
                             "else ~/.local/share/thaw/store)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print results as JSON")
    common.add_argument("--store-timeout", metavar="SECONDS", type=seconds(),
                        default=argparse.SUPPRESS,
                        help="how long one store call may take, retries included, before the "
                             "command gives up with exit 3 (a mount's read: EIO) (default 20)")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log what happens")
    parser = Parser(
        prog="thaw", parents=[common],
        description="Content-addressed, lazy-loading images for fast cold starts.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = [m for m, names in CLI_MODULES.items() if command in names] or CLI_MODULES
    for name in modules:
        importlib.import_module(name).register(sub, common)
    return parser


def named_command(argv: list[str]) -> str | None:
    """The subcommand a command line names: its first word that is neither an option nor
    a common option's value. None when there is none (``thaw --help``)."""
    words = iter(argv)
    for word in words:
        if word in _VALUED:
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(named_command(argv)).parse_args(argv)
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
        import traceback

        traceback.print_exc()
        print("thaw: internal error (a bug); please report the traceback above",
              file=sys.stderr)
        return BUG_EXIT


if __name__ == "__main__":
    sys.exit(main())
