"""``medseg``: the command line. Each subcommand lives in ``app/commands/<name>.py`` and exposes
``add_parser(subparsers)`` and ``run(args) -> int``. Known user errors print one line on stderr
and exit with code 2, never a traceback: control characters in the message (a newline in a file
name) are escaped, and Python warnings raised on the way are not printed (libraries' notes would
make the error several lines). When the command succeeds, each warning is printed as one line
``medseg CMD: warning: ...`` (e.g. NaN voxels replaced, ``--allow-uneven`` spacing).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import warnings

# Subcommand modules, in the order `medseg --help` lists them.
COMMANDS = ["segment", "info", "serve", "labelserver", "propagate", "eval", "models", "convert-checkpoint", "oneshot", "bench", "batch", "finetune"]

USER_ERROR = 2
# commands that read files on others' behalf keep links inside their folder (data.untrusted)
SERVERS = ("serve", "labelserver")


# Any negative number a user types, exponent and -inf/-nan included: argparse's own pattern knows only
# -5 and -.5, so "--box -1e9 0 10 10" read "-1e9" as an option ("--box: expected 4 arguments"); and an anchor of a
# negative slice, "--anchor -1:m.png" ("--anchor: expected one argument", session 23), so its own check names it.
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$|^-\d+:.", re.IGNORECASE)


class OneLineParser(argparse.ArgumentParser):
    """argparse's usage errors as one line too (it printed the usage line first), with a hint for a file
    name that starts with '-' (argparse takes it for an option)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_NUMBER  # argparse's hook; no option here looks like a number

    def error(self, message: str):
        from data.untrusted import one_line

        dashed = [a for a in _ARGV if a.startswith("-") and len(a) > 1 and os.path.exists(a)]
        if dashed:
            message += f" (a file name that starts with '-': write ./{dashed[0]} or put -- before it)"
        self.exit(USER_ERROR, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


_ARGV: list[str] = []


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="medseg", description="Promptable medical image segmentation")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"app.commands.{name.replace('-', '_')}")
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    parser = build_parser()
    _ARGV[:] = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    from app.errors import USER_ERRORS
    from data.untrusted import one_line, set_link_policy

    if args.command not in SERVERS:  # the user's own files: follow links (docs/reliability.md, "Links")
        set_link_policy("follow")

    caught: list[warnings.WarningMessage] | None = None
    try:
        # a server logs its warnings as they come; every other command holds them until it succeeds
        with warnings.catch_warnings(record=args.command != "serve") as caught:
            if caught is not None:
                warnings.simplefilter("default")
            code = int(args._run(args) or 0)
    except USER_ERRORS as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"medseg {args.command}: error: {one_line(str(message))}", file=sys.stderr)
        return USER_ERROR
    except KeyboardInterrupt:
        print(f"medseg {args.command}: interrupted", file=sys.stderr)
        return 130
    for text in dict.fromkeys(one_line(str(w.message)) for w in caught or ()):
        print(f"medseg {args.command}: warning: {text}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
