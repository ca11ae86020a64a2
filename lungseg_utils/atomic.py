"""The project's one way to write files and folders: whole or not at all.

:func:`atomic_write` fills a temporary file (or folder) created exclusively beside the output
and renames it onto the output only when it is complete, so no reader and no later run ever
sees half of it. Every writer of the project goes through here.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import functools
import os
import shutil
import tempfile
from pathlib import Path

from .errors import LungsegInputError, one_line

#: Errors of a write that mean the output could not be written (a full disk, a quota, a
#: read-only file system, a failing device): reported with the output's name, not the input's.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


def _temp_prefix(path: Path) -> str:
    """``.tmp_<name>.<pid>.``: the start of every temporary name of ``path`` this process
    makes (the process id tells a live writer's from a killed one's:
    :func:`lungseg_utils.scan.outputs.remove_stale_temps`)."""
    return f".tmp_{path.name}.{os.getpid()}."


#: Inside a :func:`lungseg_utils.scan.outputs.all_or_nothing` block, the list to which each
#: :func:`atomic_write` hands its finished ``(tmp, rename)`` instead of renaming.
HELD_RENAMES = contextvars.ContextVar("lungseg_held", default=None)


def _put_in_place(tmp: Path, path: Path, folder: bool) -> None:
    """Rename ``tmp`` onto ``path`` (a folder it replaces moved aside, then deleted)."""
    with _naming(path):
        old = folder and path.is_dir() and Path(tempfile.mkdtemp(prefix=_temp_prefix(path),
                                                                 dir=path.parent))
        if old:                                  # a folder is not renamed onto a full one
            os.replace(path, old)
        os.replace(tmp, path)
        if old:
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _naming(path: Path):
    """An I/O error that means the output could not be written, as one line naming ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        raise LungsegInputError(f"{path}: could not be written ({one_line(exc)}); "
                                "nothing was left under that name.") from None


@contextlib.contextmanager
def atomic_write(path, overwrite: bool = False, suffix: str | None = None, folder: bool = False):
    """The project's one way to write a file (``folder``: a folder): ``with atomic_write(path)
    as tmp: <write to tmp>``. ``tmp`` (``.tmp_<name>.<pid>.<random><suffix>``, by default
    ``path``'s suffixes, for writers that pick the format from the name) is created
    exclusively beside ``path``, renamed onto it with ordinary permissions on success (inside
    an ``all_or_nothing`` block, :data:`HELD_RENAMES`, when the block ends), removed on failure
    or Ctrl-C; missing folders are created. Refuses to replace an existing ``path`` unless
    ``overwrite``; a write that fails for want of space or permission raises
    LungsegInputError naming ``path``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise LungsegInputError(f"{path}: {'folder' if path.is_dir() else 'file'} exists; pass "
                                "overwrite=True (--overwrite) to replace it.")
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        if folder:
            tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), dir=path.parent))
        else:
            suffix = suffix if suffix is not None else ("".join(path.suffixes[-2:]) or ".tmp")
            fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=suffix, dir=path.parent)
            os.close(fd)
            tmp = Path(tmp)
    held = HELD_RENAMES.get()
    try:
        with _naming(path):
            yield tmp
            os.umask(umask := os.umask(0))       # read the umask (only setting it tells it)
            os.chmod(tmp, (0o777 if folder else 0o666) & ~umask)  # mkstemp/mkdtemp: owner only
            if held is not None:
                held.append((tmp, functools.partial(_put_in_place, tmp, path, folder)))
                return
            _put_in_place(tmp, path, folder)
    finally:
        if held is None or not any(t == tmp for t, _ in held):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)

