"""The ``mosmos`` command. Each sub-command lives in ``mosmos.commands.<name>`` and provides
``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import MosmosError, shorten

COMMANDS = ("tags", "pretrain", "finetune", "segment", "evaluate", "info", "models", "demo", "study", "web", "qc")


class Parser(argparse.ArgumentParser):
    """A usage error is one line and exit code 1, like every other error of the command."""

    def error(self, message: str):
        self.exit(1, f"{self.prog}: error: {shorten(message, 300)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = Parser(prog="mosmos", description="MOSMOS: multi-organ segmentation "
                                     "prompted by organ names, with report-supervised pre-training.")
    parser.add_argument("--version", action="version", version=f"mosmos {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"mosmos.commands.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except MosmosError as e:
        print(f"mosmos {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mosmos {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
