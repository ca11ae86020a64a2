"""The right and the left lung: a lung mask split by the patient's side.

The ``segment`` command writes the sides as labels (``--labels lr``) and the scan's summary
gives their volumes (:func:`lungseg_utils.scan.quality.scan_summary`). The sides are read
from the affine, so the same anatomy stored in any voxel order gets the same labels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..anatomy import check_spacing

RIGHT_LUNG, LEFT_LUNG = 1, 2
#: Lung whose side cannot be told: one lung part in view and no midline to place it by.
UNKNOWN_SIDE = 3
MIN_LUNG_FRACTION = 0.1     # a part this small of the mask is not a lung of its own


def _two_lungs(mask: np.ndarray, max_erosions: int) -> np.ndarray | None:
    """Labels 1, 2 of two separate parts that each hold >= MIN_LUNG_FRACTION of ``mask``,
    eroding ``mask`` up to ``max_erosions`` times until it falls apart; None if it never does."""
    part, total = mask, mask.sum()
    for _ in range(max_erosions + 1):
        labels, n = ndi.label(part)
        sizes = np.bincount(labels.ravel())[1:]
        big = np.flatnonzero(sizes >= MIN_LUNG_FRACTION * total)
        if len(big) >= 2:
            two = big[np.argsort(sizes[big])[::-1][:2]] + 1
            return np.where(labels == two[0], 1, 0) + np.where(labels == two[1], 2, 0)
        part = ndi.binary_erosion(part)
        if not part.any():
            return None
    return None


def split_left_right(mask, affine, spacing_mm=None, midline_x_mm: float | None = None,
                     max_erosions: int = 10) -> np.ndarray:
    """Label a lung mask by side: :data:`RIGHT_LUNG` (1) and :data:`LEFT_LUNG` (2).

    The sides are the patient's, read from the affine (RAS world: x grows towards the
    patient's right), so the same anatomy stored in any voxel order gets the same labels.
    Two separate parts of the mask that each hold at least a tenth of it are the lungs;
    where the lungs touch, the mask is eroded (up to ``max_erosions`` voxels) until it falls
    apart into two such parts, and every mask voxel joins its nearest part (distances in mm).
    Failing that, or if both parts lie on one side of ``midline_x_mm`` (the body's midline,
    world x in mm, when known: then they are one lung), the sagittal plane at the midline
    divides the mask (``midline_x_mm`` None: at the mask's median x). ``midline_x_mm`` NaN
    says the midline is unknown (the body is cut off by the field of view): a mask that is
    one part is then labelled :data:`UNKNOWN_SIDE`, never split at a guessed plane.

    Parameters
    ----------
    mask : ndarray (X, Y, Z), nonzero = lung.
    affine : ndarray (4, 4) voxel -> world (RAS mm).

    Returns
    -------
    ndarray uint8 (X, Y, Z): 0 background, 1 right lung, 2 left lung (3: side unknown).
    """
    mask = np.asarray(mask) != 0
    affine = np.asarray(affine, dtype=np.float64)
    out = np.zeros(mask.shape, np.uint8)
    if not mask.any():
        return out
    box = ndi.find_objects(mask.astype(np.uint8))[0]
    sub = mask[box]
    offset = np.array([s.start for s in box], float)
    spacing = check_spacing(spacing_mm if spacing_mm is not None else
                            np.sqrt((affine[:3, :3] ** 2).sum(axis=0)), 3)

    def world_x(index):     # world x (mm) of voxel indices (3, N) of the box
        return affine[0, :3] @ (np.asarray(index, float) + offset[:, None]) + affine[0, 3]

    xw = world_x(np.indices(sub.shape).reshape(3, -1)).reshape(sub.shape)
    seeds = _two_lungs(sub, max_erosions)
    centre_x = None if seeds is None else [xw[seeds == k].mean() for k in (1, 2)]
    unknown = midline_x_mm is not None and not np.isfinite(midline_x_mm)
    if centre_x is None and unknown:
        out[box] = np.where(sub, UNKNOWN_SIDE, 0)
        return out
    if centre_x is None or (midline_x_mm is not None and not unknown
                            and (centre_x[0] - midline_x_mm) * (centre_x[1] - midline_x_mm) > 0):
        plane = np.median(xw[sub]) if midline_x_mm is None else midline_x_mm
        out[box] = np.where(sub, np.where(xw > plane, RIGHT_LUNG, LEFT_LUNG), 0)
        return out
    right, left = (1, 2) if centre_x[0] > centre_x[1] else (2, 1)
    is_right = seeds == right
    if (sub & (seeds == 0)).any():    # voxels in neither part (eroded away, small pieces)
        d_right = ndi.distance_transform_edt(seeds != right, sampling=spacing)
        d_left = ndi.distance_transform_edt(seeds != left, sampling=spacing)
        # A voxel as near to both goes by its side of the midpoint: no dependence on voxel order.
        is_right = (d_right < d_left) | ((d_right == d_left) & (xw > np.mean(centre_x)))
    out[box] = np.where(sub, np.where(is_right, RIGHT_LUNG, LEFT_LUNG), 0)
    return out
