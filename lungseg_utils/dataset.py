"""The Keras ``PyDataset`` that feeds training: cases in memory, augmented on the fly.

Each sample's generator is seeded from ``(seed, epoch, position in the epoch)``, so a batch
is the same whichever worker thread computes it, and each epoch augments every case anew.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from . import dataio, preprocess
from .augment import AUGMENT_DEFAULTS, augment_pair
from .config import HU_WINDOW, MODEL_SHAPE, import_keras_quietly
from .errors import LungsegInputError

keras = import_keras_quietly()

#: Most of a lung mask is air: at least this fraction of its voxels lies below -500 HU.
MIN_AIR_FRACTION = 0.5


def _on_model_grid(case):
    """``case``, refused if it is not on the model grid."""
    if case.shape != MODEL_SHAPE:
        raise LungsegInputError(f"{case.path}: shape {case.shape} is not the model grid "
                                f"{MODEL_SHAPE}; resample it with lungseg_utils.geometry first.")
    return case


def check_training_cases(case_dirs) -> list[str]:
    """Check every case a run will use before its folder is made: each must load
    (:func:`lungseg_utils.dataio.load_case`), lie on the model grid and have a plausible lung
    mask (not empty, at least :data:`MIN_AIR_FRACTION` of it below -500 HU). Raises
    LungsegInputError at the first problem; returns the notes to say once (merged labels)."""
    merged = []
    for folder in case_dirs:
        case = _on_model_grid(dataio.load_case(folder))
        mask_path = Path(folder) / dataio.MASK_NAME
        if not case.mask.any():
            raise LungsegInputError(f"{mask_path}: the lung mask is empty; a training case "
                                    "needs its lungs drawn.")
        air = float((case.ct_hu[case.mask > 0] < -500.0).mean())
        if air < MIN_AIR_FRACTION:
            raise LungsegInputError(f"{mask_path}: only {100 * air:.0f} % of the mask lies "
                                    "below -500 HU; a lung mask is mostly air (is it the right "
                                    "file, on the CT's grid?).")
        if len(case.labels) > 1:
            merged.append(f"{case.case_id} {list(case.labels)}")
    note = f"labels merged into one lung (any label > 0 is lung): {', '.join(merged)}"
    return [note] if merged else []


def load_training_arrays(case_dirs, hu_window=HU_WINDOW):
    """Load case folders into float32 arrays X (n, 64, 64, 64, 1) in [0, 1] and Y in {0, 1}."""
    cases = (_on_model_grid(dataio.load_case(folder)) for folder in case_dirs)
    pairs = [preprocess.preprocess_case(case.ct_hu, case.mask, hu_window) for case in cases]
    return np.stack([x for x, _ in pairs]), np.stack([y for _, y in pairs])


class LungDataset(keras.utils.PyDataset):
    """Batches (x, y), float32 (b, 64, 64, 64, 1) each, of (CT, mask) for ``model.fit``.

    ``cases``: case folders (loaded once, kept in memory) or a tuple (X, Y) of arrays
    (n, 64, 64, 64, 1). ``settings`` override :data:`~lungseg_utils.augment.AUGMENT_DEFAULTS`.
    ``seed``, with the epoch and the sample's position, fixes every random choice. ``augment``
    False: the cases as they are, in order. ``samples_per_epoch``: default one pass over the
    cases. ``shuffle``: default ``augment``. ``epoch``: the first epoch (resumed runs).
    ``endless``: one stream over all epochs, ``ds[i]`` being batch ``i % len(ds)`` of epoch
    ``epoch + i // len(ds)``, so that Keras keeps one input iterator for the whole run, and
    one batch in flight a worker: Keras keeps what its queue holds at an epoch's end for the
    next, so its default queue (10) augmented and kept more batches every epoch than were
    trained on. ``kwargs`` (``workers``, ...) go to ``PyDataset``."""

    def __init__(self, cases, batch_size: int = 2, settings: dict | None = None, seed: int = 42,
                 augment: bool = True, samples_per_epoch: int | None = None,
                 shuffle: bool | None = None, epoch: int = 0, endless: bool = False, **kwargs):
        if endless:   # Keras submits one batch beyond its queue
            kwargs.setdefault("max_queue_size", max(1, kwargs.get("workers", 1) - 1))
        super().__init__(**kwargs)
        settings = settings or {}
        if isinstance(cases, tuple) and len(cases) == 2 and isinstance(cases[0], np.ndarray):
            self.x, self.y = (np.asarray(a, dtype=np.float32) for a in cases)
        else:
            self.x, self.y = load_training_arrays(cases, settings.get("hu_window", HU_WINDOW))
        if len(self.x) == 0 or self.x.shape != self.y.shape:
            raise LungsegInputError(
                f"LungDataset: need n >= 1 CTs and masks of equal shape, got {self.x.shape} "
                f"and {self.y.shape}.")
        if batch_size < 1:
            raise LungsegInputError(f"LungDataset: batch_size={batch_size} must be >= 1.")
        self.settings = {**AUGMENT_DEFAULTS, **settings}
        self.batch_size, self.seed, self.epoch = int(batch_size), int(seed), int(epoch)
        self.augment, self.endless = bool(augment), bool(endless)
        self.shuffle = self.augment if shuffle is None else bool(shuffle)
        self.samples_per_epoch = int(samples_per_epoch or len(self.x))

    @property
    def num_batches(self):
        return None if self.endless else len(self)

    def __len__(self):
        return math.ceil(self.samples_per_epoch / self.batch_size)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """Case index of each sample of ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.x)
        reps = math.ceil(self.samples_per_epoch / n)
        if not self.shuffle:
            return np.tile(np.arange(n), reps)[: self.samples_per_epoch]
        rng = np.random.default_rng([self.seed, epoch, 1 << 30])
        return np.concatenate([rng.permutation(n) for _ in range(reps)])[: self.samples_per_epoch]

    def __getitem__(self, index):
        epoch = self.epoch
        if self.endless and index >= 0:
            epoch, index = epoch + index // len(self), index % len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range for {len(self)} batches")
        order = self.order(epoch)
        positions = range(index * self.batch_size,
                           min((index + 1) * self.batch_size, self.samples_per_epoch))
        batch = []
        for pos in positions:
            x, y = self.x[order[pos]], self.y[order[pos]]
            if self.augment:
                rng = np.random.default_rng([self.seed, epoch, pos])
                x, y = augment_pair(x, y, rng, self.settings)
            batch.append((x, y))
        return tuple(np.stack(arrays).astype(np.float32) for arrays in zip(*batch))

    def on_epoch_end(self):
        if not self.endless:
            self.epoch += 1
