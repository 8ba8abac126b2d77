"""The ``archgen`` command line. Only this package knows about argv, printing and exit codes.

Each subcommand lives in its own module with two functions:

* ``add_parser(subparsers)`` registers the subcommand and sets ``func`` to its runner;
* the runner takes the parsed ``argparse.Namespace`` and returns an exit code.

Runners import heavy libraries (torch, optuna) inside the function so that ``archgen generate``
stays fast. Exit codes: 0 success; 2 bad input (one line on stderr, no traceback); 1 internal
error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from archgen.errors import UserError
from archgen.fsio import ENVIRONMENT_ERRNOS

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
MAX_MESSAGE_CHARS = 400

# Order here is the order in ``archgen --help``.
_SUBCOMMAND_MODULES = (
    "generate",
    "cost",
    "profile",
    "calibrate",
    "train",
    "search",
    "ablate",
    "export",
    "report",
)


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2."""

    def error(self, message: str) -> None:  # the argparse contract
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_BAD_INPUT)


def _user_error_types() -> tuple[type[BaseException], ...]:
    from costmodel.errors import CostModelError

    return (UserError, CostModelError, FileNotFoundError, IsADirectoryError, PermissionError)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="archgen", description="Design, price, search and export small CNNs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in _SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"archgen.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"archgen.cli.{name}":
                continue  # subcommand not built yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # Libraries' warnings (torch, sklearn, PIL) become log records: shown with -v, one line each.
    logging.captureWarnings(True)
    if not args.verbose:
        logging.getLogger("py.warnings").setLevel(logging.ERROR)
    try:
        return _run(args)
    finally:
        logging.captureWarnings(False)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except _user_error_types() as exc:
        sys.stderr.write(f"archgen {args.command}: error: {_one_line(exc)}\n")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        sys.stderr.write(f"archgen {args.command}: interrupted\n")
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # the CLI's last line of defence
        if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
            # A full disk, a quota or a read-only file system: the machine's state, not a bug.
            where = f" ({exc.filename})" if exc.filename else ""
            sys.stderr.write(f"archgen {args.command}: error: {exc.strerror or exc}{where}\n")
            return EXIT_BAD_INPUT
        if args.verbose:
            raise
        sys.stderr.write(
            f"archgen {args.command}: internal error: {type(exc).__name__}: {_one_line(exc)} "
            "(rerun with -v for the traceback)\n"
        )
        return EXIT_INTERNAL


def _one_line(exc: BaseException) -> str:
    from archgen.redact import redact_text

    text = redact_text(str(exc) or type(exc).__name__)
    if isinstance(exc, FileNotFoundError) and exc.filename and exc.strerror is not None:
        text = f"{exc.strerror}: {exc.filename}"
    text = " ".join(text.split())
    # The last guard against echoing a huge value: messages name the problem in a line.
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
