"""Command-line interface: ``energycrf <command> [options]`` (also ``python -m energycrf``).

The commands live in ``energycrf/apps/`` (the library never imports them). Adding a
command: write a module with two functions,

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...

and add one entry to ``COMMANDS`` below. The module must import nothing heavy at its top
(no torch, numpy or diffusers: ``energycrf --help``, ``energycrf COMMAND --help`` and the
usage errors answer without them, ``tests/test_cli_startup.py``); ``run`` checks the
arguments and paths first (raising :class:`~energycrf.apps._command.UsageError`), then
imports what the work needs. Only the module of the command being run is imported, so
one command's missing optional dependency never breaks another.

Errors are one line on stderr, ``energycrf COMMAND: error: MESSAGE``: a usage error (a
wrong option, a missing or unreadable input, an output that exists) exits with status 2,
a failure during the work with status 1; ``--debug`` shows the traceback instead (a usage
error still exits with status 2).
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

# name -> (module implementing add_arguments/run, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("energycrf.apps.ldm.demo", "LatentCRF on the shipped text-to-image model: picture grid and Table 1"),
    "energy-demo": ("energycrf.apps.energy_demo",
                    "an energy on a real photograph with noise: well-posedness, breakdown, solve, picture"),
    "evaluate": ("energycrf.apps.ldm.evaluate_command",
                 "Table 1 of the shipped model, or any local pipeline + CRF against its teacher and real images"),
    "compare-solvers": ("energycrf.apps.compare_solvers",
                        "compare inference solvers on a real problem: table and picture"),
    "denoise": ("energycrf.apps.denoise_command", "denoise a grey or colour image with a shipped checkpoint"),
    "train-corrector": ("energycrf.apps.ldm.corrector",
                        "train a LatentCRF corrector of a few-step sampler (DPM-Solver++, UniPC, DDIM) of the shipped model"),
    "sweep": ("energycrf.apps.ldm.sweep",
              "quality against UNet calls + CRF cost for samplers and LatentCRFs, paired intervals, Pareto figure"),
    "distill-data": ("energycrf.apps.distill_data",
                     "write stage-2 distillation shards (z_s, z_f, prompt embeddings) from a local diffusers pipeline"),
    "generate": ("energycrf.apps.generate",
                 "images (and latents) from a local diffusers pipeline with its LatentCRF, without it, or both"),
    "train": ("energycrf.apps.train_command",
              "train a LatentCRF for your own diffusers pipeline: stage 1 on images or latents, stage 2 on shards"),
}


def _fail(prog: str, message: str, status: int) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


def _option(name: str) -> str:
    """argparse's ``-o/--output`` -> ``--output`` (the long name)."""
    return name.split("/")[-1]


def rephrase(message: str) -> str:
    """argparse's messages in the commands' form, ``OPTION: expected ..., got ...``."""
    m = re.fullmatch(r"argument (?P<opt>[^:]+): (?P<rest>.*)", message, re.S)
    if m:
        opt, rest = _option(m["opt"]), m["rest"]
        choice = re.fullmatch(r"invalid choice: (?P<got>.*?) \(choose from (?P<choices>.*)\)", rest, re.S)
        if choice:
            choices = ", ".join(c.strip().strip("'") for c in choice["choices"].split(","))
            return f"{opt}: expected one of {choices}, got {choice['got']}"
        if rest.startswith("expected ") and "argument" in rest:  # "expected one argument"
            return f"{opt}: expected a value, got none"
        invalid = re.fullmatch(r"invalid (?P<kind>\w+) value: (?P<got>.*)", rest, re.S)
        if invalid:
            kind = {"int": "an integer", "float": "a number"}.get(invalid["kind"], f"a {invalid['kind']}")
            return f"{opt}: expected {kind}, got {invalid['got']}"
        return f"{opt}: {rest}"
    required = re.fullmatch(r"the following arguments are required: (?P<names>.*)", message, re.S)
    if required:
        names = ", ".join(_option(n.strip()) for n in required["names"].split(", "))
        return f"{names}: expected a value, got none (required)"
    unknown = re.fullmatch(r"unrecognized arguments: (?P<args>.*)", message, re.S)
    if unknown:
        return f"{unknown['args']}: expected an option of this command (see --help), got an unknown argument"
    return message


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (no usage block), in the commands' form."""

    def error(self, message: str) -> NoReturn:
        _fail(self.prog, rephrase(message), 2)


def _debug_option(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("--debug", action="store_true", default=default,
                        help="show the traceback of an error instead of its one-line message")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; the arguments of ``command`` (if given) are filled in by its module."""
    parser = _Parser(prog="energycrf", description="Continuous CRF energies for PyTorch.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _debug_option(parser, False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    parser.commands = {}
    for name, (module_name, help_text) in COMMANDS.items():
        description = help_text
        module = None
        if name == command:
            module = importlib.import_module(module_name)
            description = (module.__doc__ or help_text).strip().splitlines()[0]
        cmd = sub.add_parser(name, help=help_text, description=description)
        _debug_option(cmd, argparse.SUPPRESS)  # after the command too: energycrf denoise --debug ...
        if module is not None:
            module.add_arguments(cmd)
            cmd.set_defaults(_run=module.run)
        parser.commands[name] = cmd
    return parser


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``energycrf`` console script: returns 0 on success; an error prints
    one line and raises ``SystemExit`` (2: usage, 1: failure, 130: interrupted)."""
    from energycrf.apps._command import UsageError

    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args, extra = parser.parse_known_args(argv)
    cmd = parser.commands[args.command]
    if extra:
        cmd.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args._run(args) or 0)
    except UsageError as err:
        if args.debug:  # the traceback, and the same status as without --debug
            import traceback

            traceback.print_exc()
            raise SystemExit(2) from err
        _fail(cmd.prog, _one_line(err), 2)
    except KeyboardInterrupt:
        if args.debug:
            raise
        _fail(cmd.prog, "interrupted", 130)
    except Exception as err:  # a failure during the work: one line, the traceback with --debug
        if args.debug:
            raise
        _fail(cmd.prog, f"{_one_line(err)} (--debug shows the traceback)", 1)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("energycrf")
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
