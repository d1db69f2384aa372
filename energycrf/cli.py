"""Command-line interface: ``energycrf <command> [options]`` (also ``python -m energycrf``).

The commands live in ``energycrf/apps/`` (the library never imports them). Adding a
command: write a module with two functions,

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...

keep its heavy imports inside ``run``, and add one entry to ``COMMANDS`` below. Only the
module of the command being run is imported, so one command's missing optional dependency
never breaks another.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module implementing add_arguments/run, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("energycrf.apps.ldm.demo", "LatentCRF on the shipped text-to-image model: picture grid and Table 1"),
    "energy-demo": ("energycrf.apps.energy_demo",
                    "an energy on a real photograph with noise: well-posedness, breakdown, solve, picture"),
    "evaluate": ("energycrf.apps.ldm.evaluate",
                 "Table 1 for a text-to-image pipeline: Frechet distance, class accuracy, Vendi, ms/image"),
    "compare-solvers": ("energycrf.apps.compare_solvers",
                        "compare inference solvers on a real problem: table and picture"),
    "denoise": ("energycrf.apps.denoise", "denoise a grayscale image with a shipped checkpoint"),
    "train-corrector": ("energycrf.apps.ldm.corrector",
                        "train a LatentCRF corrector of a few-step sampler (DPM-Solver++, UniPC, DDIM) of the shipped model"),
    "sweep": ("energycrf.apps.ldm.sweep",
              "quality against UNet calls + CRF cost for samplers and LatentCRFs, paired intervals, Pareto figure"),
    "distill-data": ("energycrf.apps.distill_data",
                     "write stage-2 distillation shards (z_s, z_f, prompt embeddings) from a local diffusers pipeline"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; the arguments of ``command`` (if given) are filled in by its module."""
    parser = argparse.ArgumentParser(
        prog="energycrf",
        description="Continuous CRF energies for PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        if name != command:
            sub.add_parser(name, help=help_text, description=help_text)
            continue
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip().splitlines()[0])
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``energycrf`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    return int(args._run(args) or 0)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("energycrf")
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
