"""The Keras callbacks of a training run beyond Keras's own.

``SeedStateBackup``   the dropout layers' random state, saved beside BackupAndRestore's
                      files, so that a resumed run is bit-identical to an uninterrupted one
``WallClockBudget``   stops training gracefully before a wall-clock deadline
``cosine_schedule``   a learning rate that decays to nearly zero at the planned last epoch
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np

from . import io
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
        if int(saved["epoch"]) == int(io.load_json(self.meta)["epoch"]) and \
                len(generators) == len(saved.files) - 1:
            for i, sg in enumerate(generators):
                sg.state.assign(saved[f"s{i}"])
        else:
            warnings.warn(f"{self.path}: dropout state does not match the backup; not restored.",
                          LungsegWarning, stacklevel=2)

    def on_epoch_end(self, epoch, logs=None):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        states = {f"s{i}": np.asarray(sg.state.numpy()) for i, sg in enumerate(self._generators())}
        with io.atomic_write(self.path, overwrite=True) as tmp:
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


def cosine_schedule(learning_rate: float, epochs: int, floor: float = 0.01):
    """``f(epoch) -> rate`` for ``keras.callbacks.LearningRateScheduler``: half a cosine from
    ``learning_rate`` at epoch 0 down to ``floor * learning_rate`` at epoch ``epochs - 1``."""
    span = max(int(epochs) - 1, 1)

    def rate(epoch, _current=None):
        t = min(int(epoch), span) / span
        return float(learning_rate * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))))

    return rate
