"""The project's own exception and warning types.

Every error that bad input can cause is raised as :class:`LungsegInputError`, a
``ValueError`` whose message names the file and the problem in one sentence, so that a
notebook or the command line shows one clear line instead of a deep traceback
(:func:`lungseg_utils.runs.command.run_command`).
"""


class LungsegInputError(ValueError):
    """Bad input: a missing, unreadable or inconsistent file, or an impossible argument."""


class LungsegWarning(UserWarning):
    """Suspicious but usable input (an empty mask, intensities that do not look like HU)."""


def one_line(exc) -> str:
    """An exception's message on one line (or its type's name)."""
    return " ".join(str(exc).split()) or type(exc).__name__
