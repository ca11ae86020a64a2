"""Intensity preprocessing as in the original project: HU clipped to a window (default
[-1000, 300]) and scaled to [0, 1] over the window's bounds, not the volume's own min and max
(so the same HU always maps to the same value); masks binarised; a channel axis added."""

from __future__ import annotations

import numpy as np

from .config import HU_WINDOW
from .errors import LungsegInputError


def window_normalise(ct_hu: np.ndarray, hu_window=HU_WINDOW) -> np.ndarray:
    """Clip ``ct_hu`` (any shape, any real dtype) to ``hu_window`` = (low, high) and scale it
    linearly to [0, 1]. Returns float32 of the same shape."""
    lo, hi = float(hu_window[0]), float(hu_window[1])
    if not hi > lo:
        raise LungsegInputError(f"HU window {hu_window} is empty: its high bound must exceed "
                                "its low bound.")
    ct_hu = np.asarray(ct_hu, dtype=np.float32)
    return (np.clip(ct_hu, lo, hi) - lo) / (hi - lo)     # float32: lo, hi are Python floats


def binarise_mask(mask: np.ndarray) -> np.ndarray:
    """Any label > 0 is lung: returns uint8 {0, 1} of the same shape."""
    return (np.asarray(mask) > 0).astype(np.uint8)


def to_tensor(volume: np.ndarray) -> np.ndarray:
    """Add the channel axis: (X, Y, Z) -> float32 (X, Y, Z, 1)."""
    return np.asarray(volume, dtype=np.float32)[..., None]


def preprocess_case(ct_hu: np.ndarray, mask: np.ndarray | None = None, hu_window=HU_WINDOW):
    """Model-grid CT (and mask) to network tensors: (x float32 (64, 64, 64, 1) in [0, 1],
    y float32 (64, 64, 64, 1) in {0, 1} or None)."""
    x = to_tensor(window_normalise(ct_hu, hu_window))
    y = None if mask is None else to_tensor(binarise_mask(mask))
    return x, y
