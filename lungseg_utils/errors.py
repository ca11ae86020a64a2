"""The project's own exception and warning types: bad input raises :class:`LungsegInputError`,
whose one-sentence message (the file and the problem) a notebook or the command line shows as
one line instead of a deep traceback (:func:`lungseg_utils.runs.command.run_command`)."""


class LungsegInputError(ValueError):
    """Bad input: a missing, unreadable or inconsistent file, or an impossible argument."""


class LungsegWarning(UserWarning):
    """Suspicious but usable input (an empty mask, intensities that do not look like HU)."""


def one_line(exc) -> str:
    """An exception's message on one line (or its type's name)."""
    return " ".join(str(exc).split()) or type(exc).__name__
