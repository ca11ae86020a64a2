"""The project's one way to write files and folders, whole or not at all: every writer of the
project goes through :func:`atomic_write`, so no reader and no later run ever sees half a file."""

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


def _temp_beside(path: Path, suffix: str = "", folder: bool = False) -> Path:
    """A new file or folder ``.tmp_<name>.<pid>.<random><suffix>`` beside ``path``, created
    exclusively (the process id tells a live writer's from a killed one's:
    :func:`lungseg_utils.scan.outputs.remove_stale_temps`)."""
    prefix = f".tmp_{path.name}.{os.getpid()}."
    if folder:
        return Path(tempfile.mkdtemp(suffix=suffix, prefix=prefix, dir=path.parent))
    fd, tmp = tempfile.mkstemp(suffix=suffix, prefix=prefix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


#: Inside a :func:`lungseg_utils.scan.outputs.all_or_nothing` block, the list to which each
#: :func:`atomic_write` hands its finished ``(tmp, rename)`` instead of renaming.
HELD_RENAMES = contextvars.ContextVar("lungseg_held", default=None)


def _put_in_place(tmp: Path, path: Path, folder: bool) -> None:
    """Rename ``tmp`` onto ``path`` (a folder it replaces moved aside, then deleted)."""
    with _naming(path):
        old = folder and path.is_dir() and _temp_beside(path, folder=True)
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
    """Write a file (``folder``: a folder) whole or not at all: ``with atomic_write(path) as tmp:
    <write to tmp>``. ``tmp``, beside ``path`` (``suffix`` by default ``path``'s, for writers
    that pick the format from the name), is renamed onto it with ordinary permissions on success
    (in an ``all_or_nothing`` block, :data:`HELD_RENAMES`, when the block ends), removed on
    failure or Ctrl-C. Refuses to replace an existing ``path`` unless ``overwrite``; a write
    that fails for want of space (:data:`WRITE_ERRNOS`) raises LungsegInputError naming it."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise LungsegInputError(f"{path}: {'folder' if path.is_dir() else 'file'} exists; pass "
                                "overwrite=True (--overwrite) to replace it.")
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix is None:
            suffix = "" if folder else "".join(path.suffixes[-2:]) or ".tmp"
        tmp = _temp_beside(path, suffix, folder)
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
