"""The state of a training run's folder: finished, resumable, or what is missing.

A run writes its artifacts in this order: ``split.json`` and ``train_config.json`` (before
the first epoch), one ``training_log.csv`` row and a backup (``backup/``) per epoch,
``final_model.keras`` and ``best_model.keras``, and last ``test_metrics.json``; each file
appears whole or not at all (:func:`lungseg_utils.dataio.atomic_write`). So a run is *finished*
when ``test_metrics.json`` is there and both models are valid; anything short of that can
be resumed (``--resume RUN_DIR``) from its last backed-up epoch (:func:`resumed_run`), or, if
it was killed before its settings were saved, is said to be empty in one line.

:func:`fault` is a test hook: with ``LUNGSEG_FAULT_AT=<point>`` in the environment, the
process kills itself (SIGKILL, like a power cut) at that point, so the tests can check
every kill point; unset, it costs one dictionary lookup.
"""

from __future__ import annotations

import csv
import os
import signal
import warnings
import zipfile
from pathlib import Path

from .. import config, dataio
from ..errors import LungsegInputError, LungsegWarning
from ..train import LOG_NAME, RUN_ARTIFACTS

#: The folder, inside a run, of the training state while it runs (removed at the end).
BACKUP_DIR = "backup"
MODELS = ("best_model.keras", "final_model.keras")


def fault(point: str) -> None:
    """Kill this process here if ``LUNGSEG_FAULT_AT`` names ``point`` (test hook)."""
    if os.environ.get("LUNGSEG_FAULT_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


def is_valid_model(path) -> bool:
    """A ``.keras`` file that is a complete archive (not empty, not cut off)."""
    path = Path(path)
    return path.is_file() and zipfile.is_zipfile(path)


def is_finished(run_dir) -> bool:
    """Every artifact there, ``test_metrics.json`` readable and both models valid."""
    run_dir = Path(run_dir)
    if not all((run_dir / name).is_file() for name in RUN_ARTIFACTS):
        return False
    try:
        dataio.load_json(run_dir / "test_metrics.json")
    except LungsegInputError:
        return False
    return all(is_valid_model(run_dir / m) for m in MODELS)


def clean_temporary(run_dir) -> list[Path]:
    """Remove the ``.tmp_*`` files a killed write left in ``run_dir``; returns them."""
    left = sorted(Path(run_dir).glob(".tmp_*"))
    for path in left:
        path.unlink()
    return left


def check_resumable(run_dir) -> None:
    """Refuse, in one line that says what is missing and what to do, a run that cannot be
    resumed: a finished one, or one killed before its settings were written."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LungsegInputError(f"{run_dir}: no such run folder.")
    if is_finished(run_dir):
        raise LungsegInputError(f"{run_dir}: this run has finished (all of "
                                f"{', '.join(RUN_ARTIFACTS)} are there); nothing to resume.")
    if not (run_dir / "train_config.json").is_file():
        raise LungsegInputError(f"{run_dir}: stopped before its settings were saved (no "
                                "train_config.json), so nothing was trained; start a new run "
                                "(the same --seed gives the same split).")
    for name in MODELS:                         # a model an old version left half-written
        path = run_dir / name
        if path.exists() and not is_valid_model(path):
            path.unlink()


def resume_state(run_dir: Path) -> tuple[int, float | None]:
    """Epochs completed by an interrupted run (from its backup) and the best val_loss so far.

    Rows of ``training_log.csv`` beyond the backed-up epoch (or cut off by the kill) are
    dropped, atomically, so an epoch that is run again is not logged twice.
    """
    meta = run_dir / BACKUP_DIR / "training_metadata.json"
    done = int(dataio.load_json(meta)["epoch"]) if meta.exists() else 0
    log = run_dir / LOG_NAME
    best = None
    if log.exists():
        with open(log, newline="") as f:
            rows = list(csv.DictReader(f))
            fields = rows and list(rows[0].keys())
        kept = [r for r in rows if None not in r.values() and r["epoch"].isdigit()
                and int(r["epoch"]) < done]
        if kept:
            with dataio.atomic_write(log, overwrite=True) as tmp:
                with open(tmp, "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=fields)
                    writer.writeheader()
                    writer.writerows(kept)
            losses = [float(r["val_loss"]) for r in kept if r.get("val_loss")]
            best = min(losses) if losses else None
        else:
            log.unlink()
    return done, best


def resumed_run(run_dir, data_dir=None, profile=None, split=None, overrides=None):
    """An interrupted run, checked and made ready to continue: ``(run_dir, settings, split,
    folders, cfg, initial_epoch, best_val_loss)`` as :func:`lungseg_utils.train.new_run`
    gives a new one, with the epochs done and the best val_loss so far (:func:`resume_state`).

    The run keeps its settings, split and data folder: only ``epochs`` may be overridden;
    an input file that changed since the run started is warned about.
    """
    run_dir, overrides = Path(run_dir), overrides or {}
    check_resumable(run_dir)
    clean_temporary(run_dir)
    cfg = dataio.load_json(run_dir / "train_config.json")
    extra = sorted(k for k, v in overrides.items() if v is not None and k != "epochs")
    extra += ["profile"] * bool(profile) + ["split"] * (split is not None)
    if extra:
        raise LungsegInputError(
            f"resume={run_dir}: a resumed run keeps its settings; only epochs may change "
            f"(got {extra}).")
    settings = dict(cfg["settings"])
    if overrides.get("epochs"):
        settings["epochs"] = int(overrides["epochs"])
    data_dir = Path(data_dir) if data_dir else config.REPO_ROOT / cfg["data_dir"]
    folders = {p.name: p for p in dataio.discover_cases(data_dir)}
    for rel, digest in cfg.get("input_files", {}).items():
        path = data_dir / rel
        if not path.exists() or dataio.file_sha256(path) != digest:
            warnings.warn(f"{path}: differs from the file this run started with.",
                          LungsegWarning, stacklevel=3)
    return (run_dir, settings, dataio.load_json(run_dir / "split.json"), folders, cfg,
            *resume_state(run_dir))
