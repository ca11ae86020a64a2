"""Train the 3D U-Net: the course's training as visible steps, and :func:`train` that runs them.

:func:`train` trains one model from random weights, a fixed number of epochs, into a new
folder ``results/models/run_YYYYMMDD-HHMMSS/`` (or one under ``out_dir``; never
overwritten) holding :data:`RUN_ARTIFACTS`::

    split.json          the seeded patient-level split (train / val / test)
    train_config.json   every setting, package versions, SHA-256 of each input file, the split
    training_log.csv    one row per epoch: loss, dice, iou, val_*, learning_rate
    best_model.keras    the epoch with the lowest val_loss (``checkpoint="last"``: the last)
    final_model.keras   the last epoch
    test_metrics.json   Dice and IoU of each test case (threshold 0.5) and their means

``lungseg train`` (:mod:`lungseg_utils.runs.training`) runs the same steps with what long
runs add: resuming a killed run, a wall-clock budget, fine-tuning, several devices.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from . import augment, config, dataio, dataset, synthetic, unet
from .config import import_keras_quietly
from .errors import LungsegInputError, LungsegWarning
from .metrics import dice, iou

keras = import_keras_quietly()

LOG_NAME = "training_log.csv"
#: A finished run's files, in the order they are written (``test_metrics.json`` last).
RUN_ARTIFACTS = ("split.json", "train_config.json", LOG_NAME, "best_model.keras",
                 "final_model.keras", "test_metrics.json")
#: What only ``lungseg train`` does: :func:`train` refuses these rather than ignore them.
RUN_OPTIONS = ("resume", "budget_min", "init_weights", "strategy")


def _read_split(split, case_ids) -> dict:
    if isinstance(split, (str, Path)):
        split = dataio.load_json(split)
    if missing := sorted(set(split["train"] + split["val"] + split["test"]) - set(case_ids)):
        raise LungsegInputError(f"split: case(s) {missing} are not in the data folder.")
    if not split["train"] or not split["val"]:
        raise LungsegInputError("split: needs at least one training and one validation case.")
    return {"seed": split.get("seed"), "train": list(split["train"]), "val": list(split["val"]),
            "test": list(split.get("test", []))}


def evaluate_cases(model, folders, hu_window=config.HU_WINDOW, threshold: float = 0.5) -> dict:
    """Predict each case folder, threshold at ``threshold``, and score it with NumPy:
    ``{"threshold", "cases": [{"case_id", "dice", "iou"}], "mean_dice", "mean_iou", "n_cases"}``."""
    rows = []
    if folders:
        x, y = dataset.load_training_arrays(folders, hu_window)
        for folder, xi, yi in zip(folders, x, y):
            pred = np.asarray(model.predict_on_batch(xi[None]))[0, ..., 0] > threshold
            rows.append({"case_id": Path(folder).name, "dice": dice(pred, yi[..., 0] > 0.5),
                         "iou": iou(pred, yi[..., 0] > 0.5)})
    mean = (lambda k: float(np.mean([r[k] for r in rows])) if rows else None)
    return {"threshold": threshold, "cases": rows, "mean_dice": mean("dice"),
            "mean_iou": mean("iou"), "n_cases": len(rows)}


# ------------------------------------- the course's callbacks (long runs add theirs in runs/)
class EpochSummary(keras.callbacks.Callback):
    """A compact training log for notebooks: one line every ``every`` epochs and at the last
    (loss, Dice, their validation values, seconds an epoch, minutes left)."""

    def __init__(self, epochs: int, every: int):
        super().__init__()
        self.epochs, self.every, self._t0 = int(epochs), max(1, int(every)), None

    def on_epoch_begin(self, epoch, logs=None):
        if self._t0 is None:
            self._t0, self._first = time.perf_counter(), epoch

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if (epoch + 1) % self.every and epoch + 1 != self.epochs:
            return
        per_epoch = (time.perf_counter() - self._t0) / (epoch + 1 - self._first)
        values = "  ".join(f"{k} {logs[k]:.4f}" for k in ("loss", "dice", "val_loss", "val_dice")
                           if k in logs)
        left = (self.epochs - epoch - 1) * per_epoch / 60.0
        print(f"epoch {epoch + 1:>3}/{self.epochs}  {values}  ({per_epoch:.1f} s an epoch"
              f"{f', about {left:.0f} min to go' if left >= 0.5 else ''})", flush=True)


def cosine_schedule(learning_rate: float, epochs: int, floor: float = 0.01,
                    warmup_epochs: int = 0):
    """``f(epoch) -> rate`` for ``keras.callbacks.LearningRateScheduler``: a linear warm-up
    over the first ``warmup_epochs`` (from ``learning_rate / (warmup_epochs + 1)``), then half
    a cosine from ``learning_rate`` down to ``floor * learning_rate`` at epoch ``epochs - 1``."""
    warm = max(int(warmup_epochs), 0)
    span = max(int(epochs) - 1 - warm, 1)

    def rate(epoch, _current=None):
        if int(epoch) < warm:
            return float(learning_rate * (int(epoch) + 1) / (warm + 1))
        t = min(int(epoch) - warm, span) / span
        return float(learning_rate * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))))

    return rate


# --------------------------------------------------------------------------- the steps
def new_run(data_dir, out_dir, profile, split, deterministic, command, overrides):
    """Settings, split and a new run folder for a fresh run: ``(run_dir, settings, split,
    folders, cfg)``. Writes ``split.json``; ``cfg`` is what ``train_config.json`` records."""
    settings = config.get_profile(profile, **overrides)
    data_dir = Path(data_dir) if data_dir else synthetic.resolve_data_dir()
    found = dataio.discover_cases(data_dir)[: settings.get("max_cases") or None]
    folders = {p.name: p for p in found}
    if split is None:
        split = dataio.make_split(list(folders), settings["val_fraction"],
                              settings["test_fraction"], settings["seed"])
    split = _read_split(split, list(folders))
    used = split["train"] + split["val"] + split["test"]
    for note in dataset.check_training_cases([folders[c] for c in used]):   # before the folder
        warnings.warn(note, LungsegWarning, stacklevel=2)
    run_dir = config.new_run_dir(Path(out_dir) if out_dir else None)
    dataio.save_json(split, run_dir / "split.json")
    cfg = {"created": _dt.datetime.now().isoformat(timespec="seconds"),
           "run_dir": dataio.portable_path(run_dir), "data_dir": dataio.portable_path(data_dir),
           "profile": settings["profile"], "settings": settings, "deterministic": deterministic,
           "augment": {k: settings[k] for k in augment.AUGMENT_DEFAULTS},
           "versions": config.package_versions(), "split": split,
           "input_files": {f"{cid}/{name}": dataio.file_sha256(folders[cid] / name)
                           for cid in used for name in (dataio.CT_NAME, dataio.MASK_NAME)},
           "command": command}
    return run_dir, settings, split, folders, cfg


@contextlib.contextmanager
def run_session(settings: dict, cfg: dict, deterministic: bool = True):
    """For the time of a run: its seeds set, TensorFlow's deterministic ops asked for, its
    dtype policy (recorded in ``cfg["precision"]``); Keras's previous policy restored after."""
    previous_policy = keras.mixed_precision.global_policy()
    try:
        config.set_seeds(int(settings["seed"]))
        if deterministic and keras.backend.backend() == "tensorflow":
            import tensorflow as tf
            tf.config.experimental.enable_op_determinism()
        cfg["precision"] = config.training_precision(settings.get("mixed_precision"))
        keras.mixed_precision.set_global_policy(cfg["precision"])
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def build_model(settings: dict):
    """The network of ``settings`` (:func:`lungseg_utils.unet.build_from_settings`),
    compiled with its loss and learning rate (:func:`lungseg_utils.unet.compile_model`)."""
    return unet.compile_model(unet.build_from_settings(settings), settings["loss"],
                              settings["learning_rate"])


def model_record(model) -> dict:
    """What ``train_config.json`` records of the network: name, parameters, forward FLOPs."""
    return {"name": model.name, "params": int(model.count_params()),
            "forward_flops": unet.count_flops(model)}


def make_datasets(settings: dict, split: dict, folders: dict, initial_epoch: int = 0,
                  val_batches: dict | None = None):
    """The training and validation ``PyDataset`` s of a run (:mod:`lungseg_utils.dataset`):
    augmented, seeded samples of the training cases from epoch ``initial_epoch``; the
    validation cases as they are, in batches of ``val_batches`` (default: the batch size)."""
    seed, batch = int(settings["seed"]), int(settings["batch_size"])
    train_ds = dataset.LungDataset([folders[c] for c in split["train"]], batch, settings,
                                   seed=seed, augment=True, epoch=initial_epoch,
                                   samples_per_epoch=settings.get("samples_per_epoch"),
                                   endless=True, workers=int(settings.get("workers") or 1))
    val_ds = dataset.LungDataset([folders[c] for c in split["val"]], settings=settings,
                                 seed=seed, augment=False, **(val_batches or {"batch_size": batch}))
    return train_ds, val_ds


def make_callbacks(settings: dict, run_dir: Path, best_val_loss=None, extra=()) -> list:
    """The callbacks of a run, as a plain list: the learning-rate schedule, the checkpoint
    and early stopping (``checkpoint="best"`` only; a checkpoint beats ``best_val_loss``
    if given), the CSV log (appended to) and ``extra``."""
    if settings.get("lr_schedule") == "cosine":
        schedule = keras.callbacks.LearningRateScheduler(cosine_schedule(
            settings["learning_rate"], settings["epochs"],
            warmup_epochs=int(settings.get("warmup_epochs") or 0)))
    else:
        schedule = keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.5, min_lr=1e-6,
            patience=int(settings["reduce_lr_patience"]))
    callbacks = [schedule]
    if settings.get("checkpoint", "best") == "best":
        callbacks += [
            keras.callbacks.ModelCheckpoint(run_dir / "best_model.keras", monitor="val_loss",
                                            save_best_only=True,
                                            initial_value_threshold=best_val_loss),
            keras.callbacks.EarlyStopping(monitor="val_loss", restore_best_weights=False,
                                          patience=int(settings["early_stop_patience"]))]
    callbacks.append(keras.callbacks.CSVLogger(run_dir / LOG_NAME, append=True))
    return callbacks + list(extra)


def progress(settings: dict, verbose) -> tuple[int, list]:
    """Keras's verbosity for ``verbose`` and the callbacks that print instead: None or
    "auto" a bar on a terminal, else a line an epoch; "compact" none from Keras, a few lines
    a run from :class:`EpochSummary` (notebooks)."""
    if verbose == "compact":
        return 0, [EpochSummary(settings["epochs"], int(settings["epochs"]) // 6)]
    return (1 if sys.stdout.isatty() else 2) if verbose in (None, "auto") else int(verbose), []


def fit_model(model, train_ds, val_ds, settings: dict, callbacks: list, verbose=2):
    """``model.fit`` over the run's epochs: one pass of ``train_ds`` an epoch, ``val_ds``
    scored after the epochs of :func:`validation_epochs`. Returns the History."""
    return model.fit(train_ds, validation_data=val_ds, epochs=int(settings["epochs"]),
                     steps_per_epoch=len(train_ds), callbacks=callbacks, verbose=verbose,
                     shuffle=False, validation_freq=validation_epochs(settings))


def validation_epochs(settings: dict) -> list[int]:
    """The epochs (1-based) after which the validation cases are scored: every
    ``validate_every``-th, the first and the last; the others are ``NA`` in the log."""
    epochs, every = int(settings["epochs"]), max(1, int(settings.get("validate_every") or 1))
    return sorted({1, epochs, *range(every, epochs + 1, every)})


def save_models(model, run_dir: Path, settings: dict, on_written=None) -> Path:
    """Write ``final_model.keras`` (``"last"``: ``best_model.keras`` too, the same weights),
    each without the optimizer's state (:func:`drop_optimizer`); returns the model file the
    run is scored and used by. ``on_written()`` runs before the final model takes its name."""
    with dataio.atomic_write(run_dir / "final_model.keras", overwrite=True) as tmp:
        model.save(tmp)
        drop_optimizer(tmp)
        if on_written is not None:
            on_written()
    best_path = run_dir / "best_model.keras"
    if settings.get("checkpoint", "best") != "best":   # "last": the final weights are the model
        with dataio.atomic_write(best_path, overwrite=True) as tmp:
            shutil.copyfile(run_dir / "final_model.keras", tmp)
    else:                                    # the checkpoint callback's, with Adam's moments
        drop_optimizer(best_path)
    return best_path if best_path.exists() else run_dir / "final_model.keras"


def drop_optimizer(path: Path) -> None:
    """Re-save the ``.keras`` file ``path`` in place without Adam's moments (two thirds of its
    bytes): a model loaded uncompiled saves none. A missing file is left missing."""
    if path.exists():
        model = keras.saving.load_model(path, compile=False)
        with dataio.atomic_write(path, overwrite=True) as tmp:
            model.save(tmp)


def score_run(model_path: Path, run_dir: Path, split: dict, folders: dict, settings: dict,
              **training) -> dict:
    """Score the saved model on the run's test cases (:func:`evaluate_cases`) into
    ``test_metrics.json``, the last artifact, with ``training`` (wall time, epochs)."""
    metrics = evaluate_cases(keras.saving.load_model(model_path),
                             [folders[c] for c in split["test"]],
                             settings.get("hu_window", config.HU_WINDOW))
    metrics.update(model=Path(model_path).name, training=training)
    dataio.save_json(metrics, run_dir / "test_metrics.json", overwrite=True)
    return metrics


# --------------------------------------------------------------------------- training
def train(data_dir=None, out_dir=None, profile=None, split=None, *, verbose=None,
          callbacks=None, deterministic: bool = True, **overrides) -> Path:
    """Train one model from random weights and write its run folder; returns the folder.

    ``data_dir``: ``patient_XXX/{ct,lung}.nii.gz`` on the 64^3 model grid (default
    :func:`lungseg_utils.synthetic.resolve_data_dir`); ``out_dir``: where the new run folder
    goes (default ``results/models``); ``profile``: the settings to start from (default
    ``$LUNGSEG_PROFILE`` or main), single values replaced by ``overrides`` (any profile key,
    e.g. ``epochs=3``); ``split``: a split (dict or split.json) instead of a new seeded one;
    ``verbose``: :func:`progress`; ``callbacks``: extra callbacks, called after the run's own;
    ``deterministic``: :func:`run_session`. Refuses :data:`RUN_OPTIONS`: they are
    :func:`lungseg_utils.runs.training.train_run`'s."""
    known = config.get_profile(profile)
    if asked := [k for k in RUN_OPTIONS if overrides.get(k) is not None or known.get(k)]:
        raise LungsegInputError(f"train: {', '.join(asked)} is for `lungseg train` "
                                "(lungseg_utils.runs.training.train_run); this trains a new "
                                "run from random weights for a fixed number of epochs.")
    overrides = {k: v for k, v in overrides.items() if k not in RUN_OPTIONS}   # all None here
    t_start = time.perf_counter()
    run_dir, settings, split, folders, cfg = new_run(data_dir, out_dir, profile, split,
                                                     deterministic, None, overrides)  # no command
    with run_session(settings, cfg, deterministic):
        model = build_model(settings)                                          # 1. build
        train_ds, val_ds = make_datasets(settings, split, folders)
        cfg["model"] = model_record(model)
        dataio.save_json(cfg, run_dir / "train_config.json")
        keras_verbose, printers = progress(settings, verbose)
        fit_model(model, train_ds, val_ds, settings,                           # 2. fit
                  make_callbacks(settings, run_dir, extra=[*printers, *(callbacks or [])]),
                  keras_verbose)
        model_path = save_models(model, run_dir, settings)                     # 3. save
        score_run(model_path, run_dir, split, folders, settings,               # 4. score
                  wall_s_this_session=round(time.perf_counter() - t_start, 1),
                  epochs_planned=int(settings["epochs"]))
    return run_dir
