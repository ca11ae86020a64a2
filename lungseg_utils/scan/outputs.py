"""Output paths checked before any work: nothing is overwritten by surprise, least of all an input.

The inference command writes several files per scan (mask, probability, summary, DICOM SEG)
and, in folder mode, a table over all scans. :func:`check_output_paths` refuses, in one line
and before the first prediction, whatever would fail or do harm at the end: a wrong suffix,
a folder where a file should go, an output that is an input or another output, an existing
file without ``--overwrite``, a folder that cannot be created or written;
:func:`remove_stale_temps` clears what a killed write of an output left, and
:func:`all_or_nothing` writes a scan's files all or none.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import tempfile
from pathlib import Path

from .. import atomic
from ..errors import LungsegInputError, one_line

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def check_output_paths(outputs, inputs=(), overwrite: bool = False) -> None:
    """Check every output path before any work is done; raise LungsegInputError (one line)
    at the first problem.

    ``outputs``: (path, what, suffixes) triples, e.g. ``(p, "--output_mask",
    NIFTI_SUFFIXES)``; ``inputs``: the files read. Each output must end in one of its
    suffixes, must not be a folder, an input or another output, must not exist unless
    ``overwrite``; its folder must accept a file, or be one that can be created. Temporary
    files an earlier, killed write of the same output left are removed
    (:func:`remove_stale_temps`; never an input).
    """
    inputs = {Path(p).resolve() for p in inputs}
    seen: dict[Path, str] = {}
    for path, what, suffixes in outputs:
        path = Path(path)
        if not path.name.endswith(tuple(suffixes)) or path.name in suffixes:
            raise LungsegInputError(f"{path}: {what} must be a file name ending in "
                                    f"{' or '.join(suffixes)}.")
        if path.is_dir():
            raise LungsegInputError(f"{path}: {what} is an existing folder; give a file name.")
        resolved = path.resolve()
        if resolved in inputs:
            raise LungsegInputError(f"{path}: {what} is an input file; writing it would destroy "
                                    "the input.")
        if resolved in seen:
            raise LungsegInputError(f"{path}: given as both {seen[resolved]} and {what}.")
        seen[resolved] = what
        if path.exists() and not overwrite:
            raise LungsegInputError(f"{path}: file exists; pass --overwrite to replace it.")
        _check_folder(path)
    for path, _, _ in outputs:           # what a killed earlier write of the same file left
        remove_stale_temps(path, keep=inputs)


def _check_folder(path: Path) -> None:
    """The folder of ``path`` exists and accepts a file, or can be created (it is created
    when the file is written, so a scan that fails leaves no empty folder behind)."""
    folder = path.parent
    existing = next(p for p in [folder, *folder.parents] if p.exists())
    if not existing.is_dir():
        raise LungsegInputError(f"{folder}: output folder cannot be created ({existing} is a file).")
    try:
        fd, probe = tempfile.mkstemp(prefix=".tmp_probe_", dir=existing)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise LungsegInputError(f"{folder}: output folder cannot be written "
                                f"({one_line(exc)}).") from None


def remove_stale_temps(path, folder: bool = False, keep=()) -> list[Path]:
    """Remove (and return) the temporary files or folders a killed
    :func:`lungseg_utils.atomic.atomic_write` of ``path`` left: names of exactly its shape,
    ``.tmp_<name>.<pid>.<8 characters of mkstemp><suffix>``, whose process is gone; never a
    live writer's (this or another process), never one of ``keep`` (the inputs)."""
    path, keep = Path(path), {Path(p).resolve() for p in keep}
    pattern = re.compile(rf"\.tmp_{re.escape(path.name)}\.(\d+)\.[a-z0-9_]{{8}}(\.[^/]*)?")
    stale = []
    for p in sorted(path.parent.glob(glob.escape(f".tmp_{path.name}.") + "*")):
        match = pattern.fullmatch(p.name)
        if (not match or p.resolve() in keep or p.is_dir() != folder
                or int(match[1]) == os.getpid() or _process_alive(int(match[1]))):
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        stale.append(p)
    return stale


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # another user's process: alive
        return True
    return True


@contextlib.contextmanager
def all_or_nothing():
    """All of a block's files or none: every :func:`lungseg_utils.atomic.atomic_write` inside
    ``with all_or_nothing(): ...`` (the mask, the probability, the summary of one scan) writes
    its temporary file, and only when the whole block has succeeded are they renamed onto their
    paths; a failure half way (a full disk while the second file is written) leaves none."""
    held: list = []
    token = atomic.HELD_RENAMES.set(held)
    try:
        yield
        atomic.HELD_RENAMES.reset(token)
        token = None
        for _, rename in held:
            rename()
    finally:
        if token is not None:
            atomic.HELD_RENAMES.reset(token)
        for tmp, _ in held:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
