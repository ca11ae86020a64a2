"""A summary of one segmented scan, with a quality flag a person can act on.

:func:`scan_summary` turns a prediction on the input's grid into the numbers a user wants
to see (lung volumes, right and left) and a flag, ``"ok"`` or ``"check"``, with the reasons
in words. The rules are plausibility checks on the image and the result, fixed in advance
from anatomy and from how the pipeline fails, not tuned to any case:

* total lung volume outside 1-10 L (an adult chest; a child, a cropped scan or a failed
  segmentation falls outside),
* one lung under 30 % of both (a collapsed lung, a resection, or a missed lung),
* lungs touching the scan's in-plane edge (the field of view cuts them off),
* intensities that do not look like Hounsfield units,
* the ensemble's members disagreeing: two members' masks (on the 5 mm model grid) with a
  Dice below 0.95,
* the prediction disagreeing with the classical baseline
  (:func:`lungseg_utils.anatomy.classical_lung_mask`): Dice below
  :data:`MIN_BASELINE_AGREEMENT`.

The last threshold is measured, not guessed: on the robustness suite's out-of-fold
predictions (each native scan under controlled shifts, scored by members that never saw it;
never the independent test scans) it is the highest that raises a false alarm on at most
one in ten predictions with Dice 0.97 or better, so that it catches as many of those below
0.97 as it can (:func:`lungseg_utils.study.robustness.choose_flag_threshold`; the tests
derive it again from the reference's ``robustness.json``). The members' threshold says that
two members that each score about 0.98 agree at about 0.96 or better. A flag says "look at
this one", not "this is wrong".
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .. import anatomy, dataio, geometry
from .sides import LEFT_LUNG, RIGHT_LUNG, UNKNOWN_SIDE, split_left_right

LUNG_VOLUME_RANGE_ML = (1000.0, 10000.0)
MIN_SIDE_FRACTION = 0.30
MAX_EDGE_FRACTION = 0.01        # of the lung's surface on the in-plane border of the scan
MIN_AGREEMENT_DICE = 0.95       # between two members
#: Between the prediction and the classical baseline: chosen on the robustness suite
#: (module docstring; tests/test_quality_flag.py checks it against robustness.json).
MIN_BASELINE_AGREEMENT = 0.97


#: The body is cut off by the field of view on a side when it touches the scan's edge there
#: in more than this fraction of its axial slices. Cut off on one side only, its centre is
#: not the midline; on both (a field of view narrower than the chest, centred on it, as on
#: the 64^3 model grid) it still is.
MAX_CUT_SLICES = 0.05


def body_midline_x_mm(ct_hu, affine, body=None) -> float:
    """World x (RAS, mm) of the body's centre: the mean x of :func:`anatomy.body_mask`
    (``body``: that mask when already computed, bool (X, Y, Z)); NaN when there is no body or
    it is cut off at one side of the scan only (:data:`MAX_CUT_SLICES`: half a body has its
    centre elsewhere)."""
    affine = np.asarray(affine, float)
    axial = geometry.axial_axis(affine)
    body = anatomy.body_mask(ct_hu, axis=axial) if body is None else body
    if not body.any():
        return float("nan")
    lateral = int(np.argmax(np.abs(affine[0, :3])))            # the axis that runs right-left
    other = ({0, 1, 2} - {axial, lateral}).pop()
    profile = np.moveaxis(body.any(axis=other), (lateral if lateral < other else lateral - 1), 0)
    in_slice = profile.any(axis=0)                             # (lateral, axial) -> per slice
    cut = [float(profile[end][in_slice].mean()) > MAX_CUT_SLICES for end in (0, -1)]
    if cut[0] != cut[1]:               # cut off on one side only: the centre is off the midline
        return float("nan")
    ijk = np.array(np.nonzero(body), float)
    return float((affine[0, :3] @ ijk).mean() + affine[0, 3])


def members_agreement(members64, threshold: float = 0.5) -> float:
    """The lowest Dice between two members' masks on the model grid (NaN for one member).

    members64: float32 (M, 64, 64, 64), each member's probability
    (:func:`lungseg_utils.inference.predict_prob64` with ``return_members``)."""
    from ..metrics import dice

    masks = [np.asarray(p) >= threshold for p in members64]
    pairs = [dice(a, b) for i, a in enumerate(masks) for b in masks[i + 1:]]
    return float(min(pairs)) if pairs else float("nan")


def baseline_mask(ct_hu, affine, body=None) -> np.ndarray:
    """The classical baseline's lung mask (uint8 (X, Y, Z)) for a CT on its own grid
    (``body``: its body mask where already made, as the prediction's ``"body"``)."""
    return anatomy.classical_lung_mask(ct_hu, geometry.spacing_from_affine(affine),
                                       axis=geometry.axial_axis(affine), body=body)


def baseline_agreement(mask, ct_hu, affine, baseline=None) -> float:
    """Dice between ``mask`` and the classical baseline (``baseline``: its mask, computed
    here when None) on the same grid (X, Y, Z)."""
    from ..metrics import dice

    base = baseline_mask(ct_hu, affine) if baseline is None else baseline
    return float(dice(np.asarray(mask) != 0, np.asarray(base) != 0))


def scan_summary(mask, ct_hu, affine, labels=None, members64=None, baseline=True) -> dict:
    """Volumes and a quality flag for one prediction on the input's grid.

    Parameters
    ----------
    mask : ndarray (X, Y, Z), nonzero = lung (the written mask).
    ct_hu : ndarray float (X, Y, Z), the input CT in HU.
    affine : ndarray (4, 4) voxel -> world (RAS mm).
    labels : ndarray uint8 (X, Y, Z) from :func:`lungseg_utils.scan.sides.split_left_right`,
        computed here (split at the body's midline if the lungs do not separate) when not
        given.
    members64 : float32 (M, 64, 64, 64), the ensemble members' probabilities, or None
        (one model: no members' agreement).
    baseline : compare with the classical baseline (True: computed here, a few seconds on a
        native scan; or its mask, uint8 (X, Y, Z); False: not compared).

    Returns
    -------
    dict of plain numbers: ``shape``, ``spacing_mm``, ``lung_volume_ml``,
    ``right_lung_ml``, ``left_lung_ml``, ``right_fraction``, ``components``,
    ``edge_fraction``, ``members_agreement`` and ``baseline_agreement`` (Dice, None where
    not computed), ``quality`` {``flag``, ``reasons``}.
    """
    mask = np.asarray(mask) != 0
    spacing = np.array(geometry.spacing_from_affine(affine))
    voxel_ml = geometry.voxel_volume_ml(affine)
    if labels is None:
        labels = split_left_right(mask, affine, midline_x_mm=body_midline_x_mm(ct_hu, affine))
    sided = not (labels == UNKNOWN_SIDE).any()
    right_ml = float((labels == RIGHT_LUNG).sum()) * voxel_ml if sided else None
    left_ml = float((labels == LEFT_LUNG).sum()) * voxel_ml if sided else None
    total_ml = float(mask.sum()) * voxel_ml
    box, surface = anatomy.bounding_box(mask, margin=1), np.zeros_like(mask)  # alike in the box
    _, n_components = ndi.label(mask[box], structure=np.ones((3, 3, 3)))
    surface[box] = anatomy.boundary(mask[box])
    axial = geometry.axial_axis(affine)
    edge = np.zeros(mask.shape, bool)
    for axis in {0, 1, 2} - {axial}:
        index = [slice(None)] * 3
        for end in (0, -1):
            index[axis] = end
            edge[tuple(index)] = True
    edge_fraction = float((surface & edge).sum() / max(int(surface.sum()), 1))
    right_fraction = right_ml / total_ml if total_ml and sided else float("nan")

    reasons = []
    lo, hi = LUNG_VOLUME_RANGE_ML
    if total_ml == 0:
        reasons.append("no lungs found")
    elif not lo <= total_ml <= hi:
        reasons.append(f"lung volume {total_ml:.0f} mL lies outside {lo:.0f}-{hi:.0f} mL")
    if not sided:
        reasons.append("right and left cannot be told apart (one lung in view, and the body "
                       "cut off at the scan's side: no midline to place it by)")
    elif total_ml and min(right_fraction, 1 - right_fraction) < MIN_SIDE_FRACTION:
        side = "right" if right_fraction < 0.5 else "left"
        reasons.append(f"the {side} lung holds only "
                       f"{100 * min(right_fraction, 1 - right_fraction):.0f} % of the lung volume")
    if edge_fraction > MAX_EDGE_FRACTION:
        reasons.append(f"{100 * edge_fraction:.1f} % of the lung surface lies on the scan's "
                       "edge (cut off by the field of view?)")
    if not dataio.looks_like_hu(np.asarray(ct_hu)):
        reasons.append("intensities do not look like HU (no air below -200)")
    members = members_agreement(members64) if members64 is not None and len(members64) > 1 else None
    if members is not None and members < MIN_AGREEMENT_DICE:
        reasons.append(f"the ensemble's members disagree (Dice {members:.3f} between two of them)")
    given = baseline if isinstance(baseline, np.ndarray) else None
    base = (baseline_agreement(mask, ct_hu, affine, given)
            if (given is not None or baseline is True) and mask.any() else None)
    if base is not None and base < MIN_BASELINE_AGREEMENT:
        reasons.append(f"the classical baseline disagrees (Dice {base:.3f})")
    return {"shape": [int(v) for v in mask.shape],
            "spacing_mm": [round(float(v), 4) for v in spacing],
            "lung_volume_ml": round(total_ml, 1),
            "right_lung_ml": round(right_ml, 1) if sided else None,
            "left_lung_ml": round(left_ml, 1) if sided else None,
            "right_fraction": round(right_fraction, 4) if sided else None,
            "components": int(n_components), "edge_fraction": round(edge_fraction, 4),
            "members_agreement": None if members is None else round(members, 4),
            "baseline_agreement": None if base is None else round(base, 4),
            "quality": {"flag": "check" if reasons else "ok", "reasons": reasons}}
