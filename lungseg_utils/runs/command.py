"""The one command-line wrapper every ``lungseg`` command's ``main`` goes through."""

from __future__ import annotations

import shlex
import sys
import warnings

from ..errors import LungsegInputError


def one_line_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings as one line, 'warning: <message>', without the source line that raised them."""
    print(f"warning: {message}", file=sys.stderr)


def run_command(parser, run, argv=None, *, one_line_warnings: bool = False) -> int:
    """Parse ``argv``, call ``run(args)``, return its code.

    ``parser`` is an ``argparse.ArgumentParser`` (``--help`` and bad options exit there, as
    argparse does: 0 and 2). ``args.command`` is the command line as typed, the parser's
    ``prog`` words then ``argv``, for the record a run keeps. ``run`` may raise
    :class:`~lungseg_utils.errors.LungsegInputError` anywhere: it becomes one line
    ``error: <message>`` on stderr and exit code 2, with no traceback; Ctrl-C becomes
    ``interrupted`` and code 130. With ``one_line_warnings`` each warning is printed as one
    line ``warning: <message>`` while ``run`` runs.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.command = [*shlex.split(parser.prog), *argv]
    shown = warnings.showwarning
    if one_line_warnings:
        warnings.showwarning = one_line_warning
    try:
        return run(args)
    except LungsegInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown
