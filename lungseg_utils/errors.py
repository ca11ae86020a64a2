"""The project's own exception and warning types.

Every error that bad input can cause is raised as :class:`LungsegInputError`, a
``ValueError`` whose message names the file and the problem in one sentence, so that a
notebook or the command line shows one clear line instead of a deep traceback:
:func:`run_command` is the one wrapper every command's ``main`` goes through.
"""


class LungsegInputError(ValueError):
    """Bad input: a missing, unreadable or inconsistent file, or an impossible argument."""


class LungsegWarning(UserWarning):
    """Suspicious but usable input (an empty mask, intensities that do not look like HU)."""


def one_line(exc) -> str:
    """An exception's message on one line (or its type's name)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def one_line_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings as one line, 'warning: <message>', without the source line that raised them."""
    import sys

    print(f"warning: {message}", file=sys.stderr)


def run_command(parser, run, argv=None, *, one_line_warnings: bool = False) -> int:
    """The project's one command-line wrapper: parse ``argv``, call ``run(args)``, return its code.

    ``parser`` is an ``argparse.ArgumentParser`` (``--help`` and bad options exit there, as
    argparse does: 0 and 2). ``args.command`` is the command line as typed, the parser's
    ``prog`` words then ``argv``, for the record a run keeps. ``run`` may raise
    :class:`LungsegInputError` anywhere: it becomes one line ``error: <message>`` on stderr
    and exit code 2, with no traceback; Ctrl-C becomes ``interrupted`` and code 130. With
    ``one_line_warnings`` each warning is printed as one line ``warning: <message>`` while
    ``run`` runs.
    """
    import shlex
    import sys
    import warnings

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
