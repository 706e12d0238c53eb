"""The ``samscope`` command: the GUI by default, subcommands for everything scriptable.

Each subcommand lives in its own module exposing ``register(subparsers)``; that module imports
nothing heavy at import time, so ``samscope --help`` stays fast. Expected failures raise
:class:`app.core.errors.SamScopeError` (or ``OSError``/``ValueError`` from input checks) and are
printed on one line, without a traceback, with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from app import __version__

#: subcommand modules, in the order ``--help`` lists them
_COMMAND_MODULES = (
    "app.cli.gui",
    "app.cli.models",
    "app.cli.segment",
    "app.cli.io",
    "app.cli.benchmark",
    "app.cli.finetune",
    "app.cli.replay",
    "app.cli.embed",
)

EXIT_USAGE_OR_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="samscope",
        description="Segment medical scans with Segment Anything-family models "
        "(LiteMedSAM built in), and benchmark them. Without a subcommand, opens the app.",
    )
    parser.add_argument("--version", action="version", version=f"samscope {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that subcommand is not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # no subcommand (or only GUI options) means: open the app
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version", "--debug"):
        argv = ["gui", *argv]
    elif argv == ["--debug"]:
        argv = ["--debug", "gui"]
    elif os.path.exists(argv[0]) and argv[0] not in parser._subparsers._group_actions[0].choices:
        argv = ["gui", *argv]  # `samscope scan.nii.gz` opens the scan in the app
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args([*argv, "gui"])
    debug = args.debug or bool(os.environ.get("SAMSCOPE_DEBUG"))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("samscope: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into exit codes
        from app.core.errors import SamScopeError

        expected = isinstance(exc, SamScopeError | OSError | ValueError)
        if debug or not expected:
            raise
        print(f"samscope {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE_OR_INPUT
