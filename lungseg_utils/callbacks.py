"""The course's training callbacks beyond Keras's own: a cosine learning-rate schedule and a
compact log. Long runs add theirs (backups, a budget) in :mod:`lungseg_utils.runs`."""

from __future__ import annotations

import math
import time

from .config import import_keras_quietly

keras = import_keras_quietly()


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
