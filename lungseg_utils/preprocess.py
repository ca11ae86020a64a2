"""Intensity preprocessing and the body / low-HU masks that centre a scan from the image.

The original project's preprocessing: clip HU to a window (default [-1000, 300]) and min-max
scale over the window's bounds to [0, 1] (not over the volume's own min and max, so the same
HU always maps to the same value); binarise the mask; add a channel axis.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .config import HU_WINDOW
from .errors import LungsegInputError


def window_normalise(ct_hu: np.ndarray, hu_window=HU_WINDOW) -> np.ndarray:
    """Clip ``ct_hu`` to ``hu_window`` = (low, high) and scale it linearly to [0, 1].

    Parameters: ct_hu, any shape, any real dtype. Returns float32 of the same shape.
    """
    lo, hi = float(hu_window[0]), float(hu_window[1])
    if not hi > lo:
        raise LungsegInputError(f"HU window {hu_window} is empty: its high bound must exceed its low bound.")
    out = (np.clip(np.asarray(ct_hu, dtype=np.float32), lo, hi) - lo) / (hi - lo)
    return out.astype(np.float32, copy=False)


def denormalise(x01: np.ndarray, hu_window=HU_WINDOW) -> np.ndarray:
    """Inverse of :func:`window_normalise` inside the window: [0, 1] back to HU (float32)."""
    lo, hi = float(hu_window[0]), float(hu_window[1])
    return (np.asarray(x01, dtype=np.float32) * (hi - lo) + lo).astype(np.float32)


def binarise_mask(mask: np.ndarray) -> np.ndarray:
    """Any label > 0 is lung: returns uint8 {0, 1} of the same shape."""
    return (np.asarray(mask) > 0).astype(np.uint8)


def to_tensor(volume: np.ndarray) -> np.ndarray:
    """Add the channel axis: (X, Y, Z) -> float32 (X, Y, Z, 1)."""
    return np.asarray(volume, dtype=np.float32)[..., None]


def preprocess_case(ct_hu: np.ndarray, mask: np.ndarray | None = None, hu_window=HU_WINDOW):
    """Model-grid CT (and mask) to network tensors.

    Returns (x float32 (64, 64, 64, 1) in [0, 1], y float32 (64, 64, 64, 1) in {0, 1} or None).
    """
    x = to_tensor(window_normalise(ct_hu, hu_window))
    y = None if mask is None else to_tensor(binarise_mask(mask))
    return x, y


def axial_axis(affine: np.ndarray) -> int:
    """The array axis closest to the world's head-foot (z) direction."""
    return int(np.argmax(np.abs(np.asarray(affine)[2, :3]) / np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)))


def body_mask(ct_hu: np.ndarray, threshold_hu: float = -500.0, axis: int = 2) -> np.ndarray:
    """The patient's body: everything that is not outside air.

    Outside air is, on each slice across ``axis`` (the axial axis, see :func:`axial_axis`),
    the air (below ``threshold_hu``) connected to the slice's border. Lungs, airways and
    bowel gas are enclosed by the body on an axial slice and therefore count as body, even
    when the field of view cuts the body's sides. The largest 3D component is kept, which
    drops the couch where an air gap separates it from the patient.

    ct_hu: (X, Y, Z) HU. Returns bool (X, Y, Z).
    """
    air = np.moveaxis(np.asarray(ct_hu) < threshold_hu, axis, 0)
    inside = np.zeros(air.shape, bool)
    for k in range(air.shape[0]):
        labels, n = ndi.label(air[k])
        if n == 0:
            inside[k] = True
            continue
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        outside = np.isin(labels, border[border > 0])
        inside[k] = ~outside
    inside = ndi.binary_opening(inside, structure=np.ones((1, 3, 3), bool))
    labels, n = ndi.label(inside)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        inside = labels == int(np.argmax(sizes))
    return np.moveaxis(inside, 0, axis)


def low_hu_inside_body(ct_hu: np.ndarray, threshold_hu: float = -400.0,
                       body: np.ndarray | None = None) -> np.ndarray:
    """Air-like voxels (below ``threshold_hu``) inside the body: lungs, airways, bowel gas.

    Returns bool (X, Y, Z). Used to centre the model grid on the lungs from the image alone.
    """
    if body is None:
        body = body_mask(ct_hu)
    return (np.asarray(ct_hu) < threshold_hu) & body
