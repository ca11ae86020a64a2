"""The wall-clock budget of a run (``--budget_min``): a few steps timed, the epochs that fit.

Before a new run trains, :func:`plan_budget` times a few training steps on this machine and
says what the profile's epochs cost here (:func:`plan_epochs`); with ``budget_min`` it plans
as many of them as fit in the budget and returns :class:`WallClockBudget`, which stops the
run gracefully, every artifact valid, before the budget ends.
"""

from __future__ import annotations

import time

import numpy as np

from .. import unet
from ..config import import_keras_quietly

keras = import_keras_quietly()


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
