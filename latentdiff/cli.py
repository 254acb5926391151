"""The ``latentdiff`` command. Thin: parse arguments, call the library.

Each subcommand lives in the module that implements it and exposes ``add_parser(subparsers)``;
the handler it registers receives the parsed ``argparse.Namespace``. User mistakes raise
:class:`latentdiff.errors.UserError` and end as one line on stderr with exit status 2 (130 for a
training run stopped by Ctrl-C or SIGTERM, after its checkpoint).
"""
from __future__ import annotations

import argparse
import importlib
import sys

# module path -> registers one or more subcommands; imported lazily so `latentdiff --help` stays fast.
_COMMAND_MODULES = (
    "latentdiff.commands.demo",
    "latentdiff.commands.data",
    "latentdiff.commands.train",
    "latentdiff.commands.finetune",
    "latentdiff.commands.eval",
    "latentdiff.commands.generate",
    "latentdiff.commands.inpaint",
    "latentdiff.commands.serve",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2 (same as UserError)
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from latentdiff import __version__

    parser = _Parser(prog="latentdiff", description="Text-to-image latent diffusion.")
    parser.add_argument("--version", action="version", version=f"latentdiff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in _COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from latentdiff.errors import UserError

    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # the exact command, for reports
    args.own_process = argv is None  # run as the `latentdiff` program, not called from a caller's Python
    try:
        result = args.handler(args)
    except UserError as exc:
        print(f"latentdiff {args.command}: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)  # 130 for a training run stopped by Ctrl-C / SIGTERM
    except KeyboardInterrupt:
        print(f"latentdiff {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
