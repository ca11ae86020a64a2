"""The project's one way to write files and folders: whole or not at all.

:func:`atomic_write` fills a temporary file (or folder) created exclusively beside the output
and renames it onto the output only when it is complete, so no reader and no later run ever
sees half of it; :func:`all_or_nothing` holds several such renames back until a whole block
(one scan's mask, probability and summary) has succeeded; :func:`remove_stale_temps` removes
what a killed process left, and nothing else. Every writer of the project goes through here.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import glob
import os
import re
import shutil
import tempfile
from pathlib import Path

from .errors import LungsegInputError, one_line

#: Errors of a write that mean the output could not be written (a full disk, a quota, a
#: read-only file system, a failing device): reported with the output's name, not the input's.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


def _temp_prefix(path: Path) -> str:
    """``.tmp_<name>.<pid>.``: the start of every temporary name of ``path`` this process
    makes; the process id tells a live writer's temporary file from a killed one's."""
    return f".tmp_{path.name}.{os.getpid()}."


def _temp_pattern(path: Path) -> re.Pattern:
    """The exact shape of a temporary name :func:`atomic_write` gives ``path`` (any process):
    ``.tmp_<name>.<pid>.<8 characters of mkstemp><suffix>``."""
    return re.compile(rf"\.tmp_{re.escape(path.name)}\.(\d+)\.[a-z0-9_]{{8}}(\.[^/]*)?")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # another user's process: alive
        return True
    return True


#: The renames an :func:`all_or_nothing` block holds back until all its files are written.
_HELD: contextvars.ContextVar[list | None] = contextvars.ContextVar("lungseg_held", default=None)


def _discard(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def _put_in_place(tmp: Path, path: Path, folder: bool) -> None:
    """Rename ``tmp`` onto ``path`` (a folder it replaces moved aside, then deleted)."""
    old = folder and path.is_dir() and Path(tempfile.mkdtemp(prefix=_temp_prefix(path),
                                                             dir=path.parent))
    if old:                                      # a folder is not renamed onto a full one
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
    as tmp: <write to tmp>`` fills a temporary file (``.tmp_<name>.<pid>.<random><suffix>``,
    by default ``path``'s suffix, for writers that pick the format from the name) or folder,
    created exclusively beside ``path`` (so it can collide with no input and no other
    process's), renamed onto it with ordinary permissions on success, removed on failure or
    Ctrl-C: no reader sees half of it; what ``kill -9`` leaves, :func:`remove_stale_temps`
    removes. Inside :func:`all_or_nothing` the rename waits for the block's other files. A
    write that fails for want of space or permission raises LungsegInputError naming
    ``path``. Refuses to replace an existing ``path`` unless ``overwrite``; creates missing
    folders."""
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
    held = _HELD.get()
    try:
        with _naming(path):
            yield tmp
            os.umask(umask := os.umask(0))       # read the umask (only setting it tells it)
            os.chmod(tmp, (0o777 if folder else 0o666) & ~umask)  # mkstemp/mkdtemp: owner only
            if held is not None:
                held.append((tmp, path, folder))
                return
            _put_in_place(tmp, path, folder)
    finally:
        if held is None or not any(t == tmp for t, _, _ in held):
            _discard(tmp)


@contextlib.contextmanager
def all_or_nothing():
    """All of a block's files or none: every :func:`atomic_write` inside ``with
    all_or_nothing(): ...`` (the mask, the probability, the summary of one scan) writes its
    temporary file, and only when the whole block has succeeded are they renamed onto their
    paths; a failure half way (a full disk while the second file is written) leaves none."""
    held: list = []
    token = _HELD.set(held)
    try:
        yield
        _HELD.reset(token)
        token = None
        for tmp, path, folder in held:
            with _naming(path):
                _put_in_place(tmp, path, folder)
    finally:
        if token is not None:
            _HELD.reset(token)
        for tmp, _, _ in held:
            if tmp.exists():
                _discard(tmp)


def remove_stale_temps(path, folder: bool = False, keep=()) -> list[Path]:
    """Remove (and return) the temporary files or folders a killed :func:`atomic_write` of
    ``path`` left: names of exactly its shape whose process is gone, never a live writer's
    (this or another process), never one of ``keep`` (the inputs)."""
    path, keep = Path(path), {Path(p).resolve() for p in keep}
    pattern, stale = _temp_pattern(path), []
    for p in sorted(path.parent.glob(glob.escape(f".tmp_{path.name}.") + "*")):
        match = pattern.fullmatch(p.name)
        if (not match or p.resolve() in keep or p.is_dir() != folder
                or int(match[1]) == os.getpid() or _process_alive(int(match[1]))):
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        stale.append(p)
    return stale
