"""``usnprune-solver``: the builtin verifier behind the VNN-LIB standard's command line (chapter 5).

    usnprune-solver --name | --version                                         (5.2)
    usnprune-solver verify QUERY [--network NAME=ONNX] [--timeout SECONDS]
                                 [--serialise-assignments FOLDER]              (5.3)
    usnprune-solver supports --<capability>                                    (5.4)

This is the only module that writes stdout, and it writes only what the standard defines
there: the name, the version, a result line and its assignment (5.3.1), a capability's
lines (5.4). Everything else -- notes, warnings, errors -- goes to stderr (5.1). An error
is one line ``usnprune-solver: error: ...`` with nothing on stdout and exit status 2, as
for every usnprune command; an answer, whichever of the four, exits 0 (the standard defines
no exit codes).

Accepted beyond the letter of the standard, so that no caller's reading breaks: the
command ``capabilities`` (5.1's name for ``supports``), ``--assignments`` (5.3's usage
block's name for ``--serialise-assignments``), ``--multiple-inputs-output-theories``
(5.4.2's example), and a ``--timeout`` with a fraction (the standard says an integer; the
conformance suite sends ``5.0``). Abbreviated options are not accepted.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # the --timeout clock starts with the process, before the imports below

import argparse  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NoReturn, Sequence  # noqa: E402

from . import capabilities, spec  # noqa: E402

PROGRAM = "usnprune-solver"
SOLVER_NAME = "usnprune builtin verifier (usnprune-solver)"
EXIT_ANSWER = 0
EXIT_ERROR = 2  # usnprune's status for every user error


def emit(lines: Sequence[str]) -> None:
    """Write lines to stdout as bytes, each ended by one LF, whatever the platform."""
    sys.stdout.flush()
    sys.stdout.buffer.write("".join(f"{line}\n" for line in lines).encode("utf-8"))
    sys.stdout.buffer.flush()


def fail(message: str) -> NoReturn:
    print(f"{PROGRAM}: error: {message}", file=sys.stderr)
    sys.exit(EXIT_ERROR)


class _Parser(argparse.ArgumentParser):
    """One-line usage errors, exit 2, and no abbreviations: 5.4 defines eleven exact spellings."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        fail(message)


def _network(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected <name>=<onnx file>, got {text!r}")
    return name, path


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROGRAM, description="The usnprune builtin verifier behind the VNN-LIB 2.0 command line "
                                               "(standard, chapter 5).")
    group = parser.add_mutually_exclusive_group()
    group.add_argument(spec.NAME, action="store_true", help="print the solver's full name (5.2)")
    group.add_argument(spec.VERSION, action="store_true", help="print the solver's version (5.2)")
    commands = parser.add_subparsers(dest="command", metavar="<command>")
    v = commands.add_parser(spec.VERIFY, help="answer a query: sat, unsat, unknown or timed-out (5.3)")
    v.add_argument("query", help="the VNN-LIB query file (1.0 or 2.0, plain or .gz)")
    v.add_argument(spec.NETWORK, dest="networks", action="append", type=_network, default=[], metavar="NAME=ONNX",
                   help="the ONNX file of a declared network (a 1.0 query: one, any name)")
    v.add_argument(spec.TIMEOUT, type=_seconds, metavar="SECONDS", help="time allowed (default: until decided)")
    v.add_argument(spec.SERIALISE_ASSIGNMENTS, spec.ASSIGNMENTS_ALIAS, dest="serialise", metavar="FOLDER",
                   help="not supported (supports --serialise-assignments: false); the assignment is printed")
    for command in (spec.SUPPORTS, spec.CAPABILITIES_COMMAND):
        s = commands.add_parser(command, help="report one capability (5.4)" if command == spec.SUPPORTS else None)
        flags = s.add_mutually_exclusive_group(required=True)
        for capability in spec.CAPABILITIES:
            flags.add_argument(capability, dest="capability", action="store_const", const=capability)
        flags.add_argument(spec.MULTIPLE_INPUT_OUTPUT_ALIAS, dest="capability", action="store_const",
                           const=spec.MULTIPLE_INPUT_OUTPUT_THEORIES, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command is not None and (args.name or args.version):
        fail(f"{spec.NAME} and {spec.VERSION} are global options; give them without a command")
    if args.name:
        emit([SOLVER_NAME])
        return EXIT_ANSWER
    if args.version:
        from usnprune import __version__

        emit([__version__])
        return EXIT_ANSWER
    if args.command is None:
        fail(f"give a command ({', '.join(spec.COMMANDS)}) or a global option ({', '.join(spec.GLOBAL_OPTIONS)})")
    if args.command == spec.VERIFY:
        return _verify(args)
    emit(capabilities.answer(args.capability))
    return EXIT_ANSWER


def _verify(args: argparse.Namespace) -> int:
    from usnprune.errors import UsnpruneError

    from .verify import Request, verify

    if args.serialise:
        print(f"{PROGRAM}: note: {spec.SERIALISE_ASSIGNMENTS} is not supported (supports "
              f"{spec.SERIALISE_ASSIGNMENTS} answers {spec.FALSE}); a satisfying assignment is printed", file=sys.stderr)
    request = Request(Path(args.query), list(args.networks), args.timeout, args.serialise)
    try:
        answer = verify(request, STARTED)  # everything that can refuse the run does so before stdout is written
    except UsnpruneError as e:
        fail(str(e))
    if answer.note:
        print(f"{PROGRAM}: {answer.result}: {answer.note}", file=sys.stderr)
    emit([answer.result] + answer.assignment)
    return EXIT_ANSWER


if __name__ == "__main__":
    sys.exit(main())
