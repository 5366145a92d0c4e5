"""The `hparr` command: a thin layer that parses flags, calls the library and writes results."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import threading

from .. import __doc__ as package_doc
from .. import __version__
from ..errors import HparrError, first_line
from ..files import WRITE_ERRNOS
from ._args import ArgumentParser, CommandLineError

# subcommand -> (module under hparr.cli, one-line help)
COMMANDS = {
    "train": ("_train", "train a model with snapshots (the paper's train.py)"),
    "projections": ("_projections", "per-layer hyperplane statistics and bias tests (compute_projections.py)"),
    "reinit": ("_reinit", "layer re-initialization test of Zhang et al. (reinit_layers.py)"),
    "reproduce": ("_reproduce", "the whole study: train, projections, reinit, report"),
    "study": ("_study", "a grid of reproduce runs over seeds and corruptions, with statistics across it"),
    "report": ("_report", "figures, summary.md and index.html from result files (of a run or a study)"),
    "survey": ("_survey", "the layers of many networks: is a layer biased where its input is non-negative?"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the chosen subcommand's module is imported (start-up stays fast)."""
    parser = ArgumentParser(prog="hparr", description=package_doc)
    parser.add_argument("--version", action="version", version=f"hparr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if name != command:
            sub.add_parser(name, help=help_text, add_help=False)
            continue
        mod = importlib.import_module(f"{__name__}.{module}")
        p = sub.add_parser(name, help=help_text, description=getattr(mod, "DESCRIPTION", help_text))
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _thread_excepthook(args) -> None:
    """TensorBoard's writer thread re-raises its failed write in the main thread, which reports it in one
    line: its own traceback is not printed. Everything else goes to the default hook."""
    if (type(args.thread).__module__.startswith("tensorboard.") and isinstance(args.exc_value, OSError)
            and args.exc_value.errno in WRITE_ERRNOS):
        return
    threading.__excepthook__(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `hparr` and `python -m hparr`; returns the exit code."""
    threading.excepthook = _thread_excepthook
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    try:
        args = parser.parse_args(argv)
    except CommandLineError as exc:  # a malformed value, an unknown flag: one line, not the usage text
        prog = f"hparr {command}" if exc.prog == parser.prog and command in COMMANDS else exc.prog
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except HparrError as exc:
        print(f"hparr {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"hparr {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - out-of-memory must read as advice, not a traceback
        if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower():
            print(f"hparr {args.command}: error: out of memory ({first_line(exc)}); "
                  "try a smaller --batch-size", file=sys.stderr)
            return 1
        raise


def run(argv: list[str] | None = None) -> None:
    """The process entry of `hparr`, `python -m hparr` and the paper's script names: `main`, then the process
    ends at once with its exit code. By then every result is written and closed (runs release their locks,
    pools and writers are shut down in `main`); what is left is the interpreter's teardown of torch, about
    0.4 s of every command. Logs and the standard streams are flushed first. An exception that escapes
    `main` (a bug, argparse's exit) ends the process the usual way."""
    code = main(argv)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`hparr ... | head`): nothing more can be said
            pass
    end_process(code)


def end_process(code: int) -> None:
    """End this process now with `code`, skipping the interpreter's teardown (see `run`)."""
    os._exit(code)


def script_main(command: str) -> None:
    """Run `command` with the process arguments (for the paper's script names)."""
    run([command, *sys.argv[1:]])
