"""The Keras callbacks of a training run beyond Keras's own.

``SeedStateBackup``   the dropout layers' random state, saved beside BackupAndRestore's
                      files, so that a resumed run is bit-identical to an uninterrupted one
``WallClockBudget``   stops training gracefully before a wall-clock deadline
``cosine_schedule``   a warm-up, then a learning rate that decays to nearly zero at the last epoch
``plan_epochs``       a few steps timed: what the profile costs here, the epochs a budget allows
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np

from . import dataio, unet
from .config import import_keras_quietly
from .errors import LungsegWarning

keras = import_keras_quietly()


class SeedStateBackup(keras.callbacks.Callback):
    """Back up the random-number state of the Dropout layers beside BackupAndRestore's files.

    Keras does not save a ``SeedGenerator``'s state with the weights, so without this a
    resumed run would replay the dropout masks of its first epochs. Must come before
    ``BackupAndRestore`` in the callback list: the state is tagged with its epoch and only
    restored if that matches the epoch of the restored weights.
    """

    def __init__(self, backup_dir: Path):
        super().__init__()
        self.path = Path(backup_dir) / "seed_states.npz"
        self.meta = Path(backup_dir) / "training_metadata.json"

    def _generators(self):
        return [layer.seed_generator for layer in self.model.layers
                if getattr(layer, "seed_generator", None) is not None]

    def on_train_begin(self, logs=None):
        if not (self.path.exists() and self.meta.exists()):
            return
        saved = np.load(self.path)
        generators = self._generators()
        if int(saved["epoch"]) == int(dataio.load_json(self.meta)["epoch"]) and \
                len(generators) == len(saved.files) - 1:
            for i, sg in enumerate(generators):
                sg.state.assign(saved[f"s{i}"])
        else:
            warnings.warn(f"{self.path}: dropout state does not match the backup; not restored.",
                          LungsegWarning, stacklevel=2)

    def on_epoch_end(self, epoch, logs=None):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        states = {f"s{i}": np.asarray(sg.state.numpy()) for i, sg in enumerate(self._generators())}
        with dataio.atomic_write(self.path, overwrite=True) as tmp:
            np.savez(tmp, epoch=epoch + 1, **states)


class WallClockBudget(keras.callbacks.Callback):
    """Stop training after the epoch that leaves too little time for another one.

    ``deadline_s`` is a ``time.perf_counter()`` value; ``reserve_s`` is kept free for what
    follows training (saving, scoring the test cases). The next epoch's length is the median
    of the epochs seen so far after the first (which includes tracing), or ``epoch_s`` until
    there are such epochs. Records ``self.stopped_epoch`` (or None) so the run can say that
    the budget, not the epoch count, ended it.
    """

    def __init__(self, deadline_s: float, reserve_s: float = 0.0, epoch_s: float = 0.0):
        super().__init__()
        self.deadline_s, self.reserve_s = float(deadline_s), float(reserve_s)
        self.epoch_s, self.stopped_epoch = float(epoch_s), None
        self._t_epoch, self._seen = None, []

    def on_epoch_begin(self, epoch, logs=None):
        self._t_epoch = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self._seen.append(now - (self._t_epoch or now))
        nxt = float(np.median(self._seen[1:])) if len(self._seen) > 1 else self.epoch_s
        if now + nxt + self.reserve_s > self.deadline_s:
            self.stopped_epoch = int(epoch)
            self.model.stop_training = True


class EpochSummary(keras.callbacks.Callback):
    """A compact training log: one line every ``every`` epochs and at the last one (loss,
    Dice and their validation values, seconds an epoch) instead of a line or a progress bar
    per epoch; what a notebook shows in a handful of lines."""

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
        print(f"epoch {epoch + 1:>3}/{self.epochs}  {values}  ({per_epoch:.1f} s an epoch)",
              flush=True)


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


def plan_epochs(settings: dict, train_ds, n_val: int, elapsed_s: float = 0.0,
                n_steps: int = 3) -> dict:
    """Time a few training steps on this machine and plan the run's epochs.

    A throwaway model with the run's settings takes one step (tracing) and ``n_steps`` timed
    steps on the run's first batches. An epoch is its steps, the validation cases (a third
    of a step each) and 0.6 s of bookkeeping. With ``settings["budget_min"]``: as many
    epochs as fit in the budget (less ``elapsed_s``, the real model's tracing, as long as the
    probe's, and a reserve for saving and scoring), at least one; else the profile's.

    Returns ``{"step_s", "epoch_s", "epochs_profile", "epochs", "budget_min", "reserve_s",
    "message"}`` (seconds; the message says what the profile costs on this machine).
    """
    probe = unet.compile_model(unet.build_from_settings(settings), settings["loss"],
                               settings["learning_rate"])
    times = []
    for i in range(n_steps + 1):
        x, y = train_ds[i]
        t0 = time.perf_counter()
        probe.train_on_batch(x, y)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times[1:]))
    epoch_s = len(train_ds) * step_s + n_val * step_s / 3.0 + 0.6
    wanted, budget = int(settings["epochs"]), settings.get("budget_min")
    reserve_s = 15.0 + 2.0 * step_s
    epochs = wanted
    if budget:
        trace_s = max(times[0] - step_s, 0.0)
        epochs = int((60.0 * float(budget) - elapsed_s - trace_s - reserve_s) // epoch_s)
        epochs = max(1, min(wanted, epochs))
    message = (f"This machine: {step_s:.2f} s a training step (batch {train_ds.batch_size}), "
               f"about {epoch_s:.1f} s an epoch; the profile's {wanted} epochs take about "
               f"{wanted * epoch_s / 60.0:.0f} min.")
    if budget:
        message += f" Budget {float(budget):g} min: {epochs} epochs planned."
    return {"step_s": step_s, "epoch_s": epoch_s, "epochs_profile": wanted, "epochs": epochs,
            "budget_min": budget, "reserve_s": reserve_s, "message": message}


def plan_budget(settings: dict, cfg: dict, train_ds, n_val: int, announce: bool,
                t_start: float):
    """Time a few steps and say what the run costs here (and, with ``budget_min``, plan the
    epochs that fit: the run then says so in ``cfg["plan"]``); returns the budget callback."""
    if not (settings.get("budget_min") or announce):
        return None
    cfg["plan"] = plan_epochs(settings, train_ds, n_val, time.perf_counter() - t_start)
    settings["epochs"] = cfg["settings"]["epochs"] = cfg["plan"]["epochs"]
    print(cfg["plan"]["message"])
    if not settings.get("budget_min"):
        return None
    return WallClockBudget(t_start + 60.0 * float(settings["budget_min"]),
                           cfg["plan"]["reserve_s"], cfg["plan"]["epoch_s"])
