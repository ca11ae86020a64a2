"""Metrics in millimetres, post-processing of lung masks, and the classical baseline.

Conventions (each one is tested in ``tests/test_evaluate.py``)
---------------------------------------------------------------
* A mask is any array; nonzero is foreground. ``spacing_mm`` gives the voxel size along each
  array axis (anisotropic allowed); every distance is between voxel centres, in mm.
* **Surface voxels** of a mask: its voxels with at least one of their 6 face neighbours
  outside it; the outside of the array counts as background, so a mask touching the array's
  edge has surface there (``mask & ~binary_erosion(mask)``, MONAI's ``get_mask_edges``).
* **Directed surface distances** A -> B: for each surface voxel of A, the distance to the
  nearest surface voxel of B (``distance_transform_edt(~surface(B), sampling=spacing_mm)``).
* **HD95** follows MONAI's ``compute_hausdorff_distance(percentile=95)``: the larger of the
  two directed 95th percentiles. (medpy's ``hd95`` pools both sets first; it can be smaller.)
* **ASSD** is the mean of the pooled distances of both directions (Heimann et al. 2009;
  MONAI's ``compute_average_surface_distance(symmetric=True)``).
* **Empty masks**: both empty gives Dice = IoU = 1 and distances 0; exactly one empty gives
  Dice = IoU = 0 and distances ``inf``; the relative volume error is ``nan`` whenever the
  reference is empty.
* The axial (head-foot) axis is array axis 2 with the head at high indices, as
  :mod:`lungseg_utils.io` and :mod:`lungseg_utils.geometry` deliver volumes (L,P,S / R,A,S).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .errors import LungsegInputError

_FULL3 = np.ones((3, 3, 3), bool)


def _pair(pred, ref) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.asarray(pred) != 0, np.asarray(ref) != 0
    if pred.shape != ref.shape:
        raise LungsegInputError(f"pred shape {pred.shape} differs from ref shape {ref.shape}.")
    return pred, ref


def _spacing(spacing_mm, ndim: int) -> tuple:
    spacing = tuple(float(s) for s in np.ravel(spacing_mm))
    if len(spacing) == 1:
        spacing = spacing * ndim
    if len(spacing) != ndim or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise LungsegInputError(f"spacing_mm {spacing_mm} must be {ndim} positive numbers.")
    return spacing


# ----------------------------------------------------------------------------- overlap
def dice(pred, ref) -> float:
    """Dice coefficient 2|P∩R| / (|P| + |R|).

    Parameters
    ----------
    pred, ref : ndarray, equal shapes (any number of axes), any dtype; nonzero = foreground.

    Returns
    -------
    float in [0, 1]; 1.0 if both masks are empty.
    """
    pred, ref = _pair(pred, ref)
    total = int(pred.sum()) + int(ref.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & ref).sum()) / total


def iou(pred, ref) -> float:
    """Intersection over union (Jaccard index) |P∩R| / |P∪R|.

    Parameters
    ----------
    pred, ref : ndarray, equal shapes (any number of axes), any dtype; nonzero = foreground.

    Returns
    -------
    float in [0, 1]; 1.0 if both masks are empty.
    """
    pred, ref = _pair(pred, ref)
    union = int((pred | ref).sum())
    return 1.0 if union == 0 else int((pred & ref).sum()) / union


# ----------------------------------------------------------------------------- surfaces
def surface_voxels(mask) -> np.ndarray:
    """Boundary voxels: voxels of the mask with a face neighbour (6-connectivity) outside it.

    Parameters
    ----------
    mask : ndarray, any shape and dtype; nonzero = inside. Outside the array is background.

    Returns
    -------
    ndarray bool, same shape (all False for an empty mask).
    """
    mask = np.asarray(mask) != 0
    return mask & ~ndi.binary_erosion(mask, border_value=0)


def _directed(a_surf: np.ndarray, b_surf: np.ndarray, spacing: tuple) -> np.ndarray:
    """Distances (mm) from each surface voxel of A to the nearest surface voxel of B."""
    return ndi.distance_transform_edt(~b_surf, sampling=spacing)[a_surf]


def _distances_mm(pred, ref, spacing_mm) -> tuple[float, float]:
    """(HD95, ASSD) in mm under the module's conventions, empty masks included."""
    pred, ref = _pair(pred, ref)
    spacing = _spacing(spacing_mm, pred.ndim)
    if not pred.any() or not ref.any():
        value = 0.0 if pred.any() == ref.any() else float("inf")
        return value, value
    # Crop to both masks' bounding box plus one voxel: the distances do not change.
    box = tuple(slice(max(i.min() - 1, 0), i.max() + 2) for i in np.nonzero(pred | ref))
    sp, sr = surface_voxels(pred[box]), surface_voxels(ref[box])
    d_pr, d_rp = _directed(sp, sr, spacing), _directed(sr, sp, spacing)
    hd95 = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    return float(hd95), float(np.concatenate([d_pr, d_rp]).mean())


def hd95_mm(pred, ref, spacing_mm) -> float:
    """95th-percentile symmetric Hausdorff distance (MONAI convention).

    The larger of the two directed 95th percentiles (pred -> ref, ref -> pred) of the
    distances between surface voxels (see :func:`surface_voxels` and the module docstring).

    Parameters
    ----------
    pred, ref : ndarray, equal shapes (any number of axes), any dtype; nonzero = foreground.
    spacing_mm : floats, one per axis (or one for all), voxel size in mm.

    Returns
    -------
    float, mm; 0.0 if both masks are empty, ``inf`` if exactly one is.
    """
    return _distances_mm(pred, ref, spacing_mm)[0]


def assd_mm(pred, ref, spacing_mm) -> float:
    """Average symmetric surface distance: the mean of both directed distance sets, pooled.

    Parameters
    ----------
    pred, ref : ndarray, equal shapes (any number of axes), any dtype; nonzero = foreground.
    spacing_mm : floats, one per axis (or one for all), voxel size in mm.

    Returns
    -------
    float, mm; 0.0 if both masks are empty, ``inf`` if exactly one is.
    """
    return _distances_mm(pred, ref, spacing_mm)[1]


# ----------------------------------------------------------------------------- volumes
def volume_ml(mask, spacing_mm) -> float:
    """Volume of a mask: voxel count x voxel volume.

    Parameters
    ----------
    mask : ndarray, any shape and dtype; nonzero = inside.
    spacing_mm : floats, one per axis (or one for all), voxel size in mm.

    Returns
    -------
    float, millilitres (1 ml = 1000 mm^3).
    """
    mask = np.asarray(mask) != 0
    return float(mask.sum()) * float(np.prod(_spacing(spacing_mm, mask.ndim))) / 1000.0


def relative_volume_error(pred, ref) -> float:
    """Signed relative volume error (V_pred - V_ref) / V_ref.

    Parameters
    ----------
    pred, ref : ndarray, equal shapes (any number of axes), any dtype; nonzero = foreground.

    Returns
    -------
    float, a fraction (0.1 = 10 % too large); ``nan`` if ``ref`` is empty. Both masks share
    one grid, so voxel counts stand for volumes.
    """
    pred, ref = _pair(pred, ref)
    n_ref = int(ref.sum())
    return float("nan") if n_ref == 0 else (int(pred.sum()) - n_ref) / n_ref


def evaluate_masks(pred, ref, spacing_mm) -> dict:
    """All metrics of one prediction against its reference.

    Parameters
    ----------
    pred, ref : ndarray, equal shapes (any number of axes), any dtype; nonzero = foreground.
    spacing_mm : floats, one per axis (or one for all), voxel size in mm.

    Returns
    -------
    dict of floats: ``dice``, ``iou``, ``hd95_mm``, ``assd_mm`` (mm), ``volume_pred_ml``,
    ``volume_ref_ml`` (ml), ``volume_error_pct`` (100 x :func:`relative_volume_error`).
    """
    pred, ref = _pair(pred, ref)
    hd95, assd = _distances_mm(pred, ref, spacing_mm)
    return dict(dice=dice(pred, ref), iou=iou(pred, ref), hd95_mm=hd95, assd_mm=assd,
                volume_pred_ml=volume_ml(pred, spacing_mm), volume_ref_ml=volume_ml(ref, spacing_mm),
                volume_error_pct=100.0 * relative_volume_error(pred, ref))


# ----------------------------------------------------------------------------- statistics
def summarise(rows: list[dict], key: str, worst: str = "auto") -> dict:
    """Summary of ``rows[i][key]`` over cases: n, mean, sd, median, min, max and the worst case.

    Parameters
    ----------
    rows : list of dict, each with a ``case_id`` and a number under ``key``.
    key : str, e.g. ``"dice"``.
    worst : ``"min"`` (lower is worse), ``"max"`` (higher is worse), ``"absmax"`` (farther
        from 0 is worse) or ``"auto"``: min for dice/iou, absmax for keys holding ``error``,
        max otherwise.

    Returns
    -------
    dict: ``n`` (int), ``mean``, ``sd``, ``median``, ``min``, ``max``, ``worst_value``
    (floats, the metric's unit) and ``worst_case_id``. NaN values are left out (``n``
    counts the rest); ``inf`` is kept, so a failed case shows in the mean. ``sd`` is the
    sample standard deviation (ddof=1; nan if n < 2).
    """
    if not rows:
        raise LungsegInputError("summarise: rows is empty.")
    if any(key not in r or "case_id" not in r for r in rows):
        raise LungsegInputError(f"summarise: every row needs 'case_id' and {key!r}.")
    if worst not in ("auto", "min", "max", "absmax"):
        raise LungsegInputError(f"summarise: worst={worst!r} must be auto, min, max or absmax.")
    if worst == "auto":
        worst = "min" if key in ("dice", "iou") else "absmax" if "error" in key else "max"
    ids = [r["case_id"] for r in rows]
    vals = np.array([float(r[key]) for r in rows])
    keep = ~np.isnan(vals)
    ids, vals = [i for i, k in zip(ids, keep) if k], vals[keep]
    if vals.size == 0:
        return dict(n=0, mean=np.nan, sd=np.nan, median=np.nan, min=np.nan, max=np.nan,
                    worst_case_id=None, worst_value=np.nan)
    score = {"min": -vals, "max": vals, "absmax": np.abs(vals)}[worst]
    i = int(np.argmax(score))
    with np.errstate(invalid="ignore"):
        sd = float(np.std(vals, ddof=1)) if vals.size > 1 else float("nan")
    return dict(n=int(vals.size), mean=float(np.mean(vals)), sd=sd,
                median=float(np.median(vals)), min=float(vals.min()), max=float(vals.max()),
                worst_case_id=ids[i], worst_value=float(vals[i]))


def paired_bootstrap_ci(a, b, n_boot: int = 10000, ci: float = 0.95, seed: int = 0) -> dict:
    """Percentile-bootstrap confidence interval of the mean paired difference ``b - a``.

    Parameters
    ----------
    a, b : array-like of floats, shape (n_cases,): one metric of two methods on the same cases.
    n_boot : int, resamples of the cases (with replacement).
    ci : float in (0, 1), coverage of the interval.
    seed : int, seed of the NumPy generator (results are reproducible).

    Returns
    -------
    dict of floats: ``mean_diff`` (mean of b - a), ``lo`` and ``hi`` (interval bounds), in
    the metric's own unit.
    """
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    if a.size != b.size or a.size == 0:
        raise LungsegInputError(f"paired_bootstrap_ci: a and b need equal, nonzero lengths "
                                f"(got {a.size} and {b.size}).")
    if not 0.0 < ci < 1.0:
        raise LungsegInputError(f"paired_bootstrap_ci: ci={ci} must lie in (0, 1).")
    diff = b - a
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(int(n_boot), diff.size))].mean(axis=1)
    lo, hi = np.percentile(means, [50.0 * (1.0 - ci), 50.0 * (1.0 + ci)])
    return dict(mean_diff=float(diff.mean()), lo=float(lo), hi=float(hi))


# ----------------------------------------------------------------------------- post-processing
def _keep_largest(mask: np.ndarray, max_components: int, min_fraction: float) -> np.ndarray:
    """The largest 3D component (26-connected) and up to ``max_components - 1`` more, each
    kept only if it holds at least ``min_fraction`` of the largest one's voxels."""
    labels, n = ndi.label(mask, structure=_FULL3)
    if n == 0:
        return np.zeros(mask.shape, bool)
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1][:max(int(max_components), 1)]
    keep = [i + 1 for i in order if sizes[i] >= min_fraction * sizes[order[0]]]
    return np.isin(labels, keep)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes in 3D, then in each axial slice (last axis)."""
    out = ndi.binary_fill_holes(mask)
    for z in np.flatnonzero(out.any(axis=(0, 1))):
        out[:, :, z] = ndi.binary_fill_holes(out[:, :, z])
    return out


def postprocess_lungs(mask, max_components: int = 2, min_fraction: float = 0.1,
                      axis: int = 2) -> np.ndarray:
    """Clean a lung mask: keep the lungs' components, drop specks, fill enclosed holes.

    The largest 3D component (26-connectivity) is kept; the next ones (up to
    ``max_components`` in all) only if each holds at least ``min_fraction`` of the largest's
    voxels, since the two lungs may touch at the anterior junction and form one component.
    Holes are then filled in 3D and in every slice across ``axis`` (the axial axis).

    Parameters
    ----------
    mask : ndarray (X, Y, Z), any dtype, nonzero = lung.
    max_components : int, at most this many components are kept.
    min_fraction : float in [0, 1], size of a further component relative to the largest.
    axis : int, the array axis that runs head-foot.

    Returns
    -------
    ndarray uint8 {0, 1}, same shape.
    """
    mask = np.moveaxis(np.asarray(mask) != 0, axis, -1)
    out = _fill_holes(_keep_largest(mask, max_components, min_fraction))
    return np.moveaxis(out, -1, axis).astype(np.uint8)



# ----------------------------------------------------------------------------- classical baseline
def _inside_body(air: np.ndarray) -> np.ndarray:
    """Per axial slice, the area the body encloses (bool, same shape as ``air``).

    The body is the largest 3D component of non-air. Where the field of view cuts it, the
    image edge is closed between the body's outermost contacts with that edge before holes
    are filled: a lung touching the edge stays inside, while the air around the body, which
    reaches the edge beyond the body, stays outside.
    """
    labels, n = ndi.label(~air)
    inside = np.zeros(air.shape, bool)
    if n == 0:
        return inside
    body = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    for z in np.flatnonzero(body.any(axis=(0, 1))):
        cut = body[:, :, z]
        closed = np.pad(cut, 1)
        for ax in (0, 1):
            for side in (0, -1):
                hits = np.flatnonzero(np.take(cut, side, axis=ax))
                if hits.size:                 # close the padding along this edge's contacts
                    edge = [slice(None), slice(None)]
                    edge[ax], edge[1 - ax] = side, slice(hits[0] + 1, hits[-1] + 2)
                    closed[tuple(edge)] = True
        inside[:, :, z] = ndi.binary_fill_holes(closed)[1:-1, 1:-1]
    return inside


def _airway(cand: np.ndarray, spacing: tuple, max_area_mm2: float = 1000.0,
            seed_depth_mm: float = 15.0) -> np.ndarray:
    """Trachea and main bronchi, traced slice by slice from the top of the largest component.

    Seeds are the small 2D pieces (area <= ``max_area_mm2``) within ``seed_depth_mm`` of the
    component's top. Going down, a piece is airway if it overlaps the previous slice's airway
    (dilated by one voxel) and is small, or no larger than the previous slice's airway (the
    pharynx). The trace ends where the airway enters a lung: the piece there is large and
    growing. Returns bool, same shape as ``cand``.
    """
    out = np.zeros(cand.shape, bool)
    main = _keep_largest(cand, 1, 1.0)
    zs = np.flatnonzero(main.any(axis=(0, 1)))
    if zs.size == 0:
        return out
    px_mm2 = spacing[0] * spacing[1]
    prev, prev_area = None, 0.0
    for z in range(zs[-1], zs[0] - 1, -1):
        labels, k = ndi.label(main[:, :, z])
        areas = np.bincount(labels.ravel(), minlength=k + 1)[1:] * px_mm2
        if prev is None:                                   # still looking for seeds
            if (zs[-1] - z) * spacing[2] > seed_depth_mm:
                break
            take = areas <= max_area_mm2
        else:
            take = np.zeros(k, bool)
            take[np.unique(labels[prev & (labels > 0)]) - 1] = True
            take &= (areas <= max_area_mm2) | (areas <= prev_area)
        cur = np.isin(labels, 1 + np.flatnonzero(take))
        if cur.any():
            out[:, :, z] = cur
            prev, prev_area = ndi.binary_dilation(cur), cur.sum() * px_mm2
        elif prev is not None:                             # the airway has ended
            break
    return out


def classical_lung_mask(ct_hu, spacing_mm, threshold_hu: float = -400.0,
                        rim_hu: float | None = -300.0, axis: int = 2) -> np.ndarray:
    """Non-learning lung segmentation: threshold, body, airways, components, holes.

    Steps: (1) air = HU below ``threshold_hu``; (2) keep the air that the body encloses in
    each axial slice, robust to a field of view that cuts the body or a lung touching the
    volume's edge (see ``_inside_body``); (3) remove the trachea and main bronchi, traced
    down from the top (``_airway``); (4) keep the lungs' components and fill holes
    (:func:`postprocess_lungs`); (5) if ``rim_hu`` is given, add the one-voxel rim around
    the lungs that is below ``rim_hu`` (partial-volume voxels and dependent, denser lung at
    the edge), then fill holes again.

    Parameters
    ----------
    ct_hu : ndarray (X, Y, Z), Hounsfield units, any real dtype.
    spacing_mm : 3 floats, voxel size along each axis.
    threshold_hu, rim_hu : float, HU thresholds (rim None: no rim step).
    axis : int, the head-foot axis; the head must lie at its high indices (L,P,S or R,A,S).

    Returns
    -------
    ndarray uint8 {0, 1}, same shape as ``ct_hu``.
    """
    ct = np.asarray(ct_hu, dtype=np.float32)
    if ct.ndim != 3:
        raise LungsegInputError(f"ct_hu must be 3D, got shape {ct.shape}.")
    spacing = _spacing(spacing_mm, 3)
    spacing = tuple(np.array(spacing)[[i for i in range(3) if i != axis] + [axis]])
    ct = np.moveaxis(ct, axis, -1)
    air = ct < threshold_hu
    inside = _inside_body(air)
    cand = air & inside
    airway = _airway(cand, spacing)
    lungs = _fill_holes(_keep_largest(cand & ~airway, 2, 0.1))
    if rim_hu is not None:
        rim = ndi.binary_dilation(lungs) & (ct < rim_hu) & inside & ~ndi.binary_dilation(airway)
        lungs = _fill_holes(lungs | rim)
    return np.moveaxis(lungs, -1, axis).astype(np.uint8)


def compare_methods(forward, case, tta: bool = False, with_ceiling: bool = False):
    """Segment one labelled case with every method and score each against its mask.

    Methods: ``unet`` (the inference pipeline: the network's probability thresholded at 0.5
    on the case's own grid, its boundary redrawn at that grid's resolution where it is finer
    than 5 mm), ``unet_raw`` (without that refinement), ``unet_post`` (``unet`` after
    :func:`postprocess_lungs`), ``baseline`` (:func:`classical_lung_mask`)
    and, with ``with_ceiling``, ``ceiling`` (the reference mask taken to the model grid and
    back: the best any 64^3 model can do on this grid).

    Parameters
    ----------
    forward : callable from :func:`lungseg_utils.inference.compiled_forward`
    case : :class:`lungseg_utils.io.Case` with a mask

    Returns
    -------
    row : dict ``{"case_id", method: evaluate_masks(...) for each method}``
    masks : dict method -> uint8 mask on the case's grid
    prediction : the dict of :func:`lungseg_utils.inference.predict_volume`
    """
    from . import geometry, inference
    from .preprocess import axial_axis

    if case.mask is None:
        raise LungsegInputError(f"{case.path}: compare_methods needs a case with a lung mask.")
    axis = axial_axis(case.affine)
    pred = inference.predict_volume(forward, case.ct_hu, case.affine, tta=tta)
    masks = {"unet": pred["mask"],
             "unet_post": postprocess_lungs(pred["mask"], axis=axis),
             "unet_raw": pred["mask_network"],
             "baseline": classical_lung_mask(case.ct_hu, case.spacing_mm, axis=axis)}
    if with_ceiling:
        masks["ceiling"] = geometry.round_trip_mask(case.mask, case.affine, ct_hu=case.ct_hu)
    row = {"case_id": case.case_id}
    row.update({m: evaluate_masks(mask, case.mask, case.spacing_mm) for m, mask in masks.items()})
    return row, masks, pred


def summarise_methods(rows: list[dict], methods, metrics=("dice", "iou", "hd95_mm", "assd_mm",
                                                          "volume_error_pct")) -> dict:
    """``{method: {metric: summarise(...)}}`` over rows of :func:`compare_methods`."""
    out = {}
    for m in methods:
        flat = [{"case_id": r["case_id"], **r[m]} for r in rows]
        out[m] = {k: summarise(flat, k) for k in metrics}
    return out


def out_of_fold_jobs(reference_dir, max_cases: int | None = None) -> list[tuple]:
    """Which model may score which case: ``[(case_id, source, model_path), ...]``.

    If ``reference_dir/cv/fold_*/`` holds cross-validation runs (``split.json`` and
    ``best_model.keras``), every case of a fold's test part is paired with that fold's model
    (all cases, each scored by the one model that never saw it). Otherwise the reference
    model is paired with its own split's test cases. Sorted by case id; the first
    ``max_cases`` if given.
    """
    from pathlib import Path

    from .io import load_json

    reference_dir = Path(reference_dir)
    jobs = []
    for fold in sorted((reference_dir / "cv").glob("fold_*")):
        if (fold / "split.json").exists() and (fold / "best_model.keras").exists():
            jobs += [(cid, f"CV {fold.name.replace('_', ' ')}", fold / "best_model.keras")
                     for cid in load_json(fold / "split.json")["test"]]
    if not jobs:
        split = load_json(reference_dir / "split.json")
        jobs = [(cid, "reference", reference_dir / "best_model.keras") for cid in split["test"]]
    jobs.sort(key=lambda j: j[0])
    return jobs[:max_cases] if max_cases else jobs


def boundary_band(mask, spacing_mm, width_mm: float) -> np.ndarray:
    """Voxels within ``width_mm`` of the mask's boundary, inside or outside (bool, mask's shape)."""
    m = np.asarray(mask) > 0
    sp = _spacing(spacing_mm, m.ndim)
    if not m.any() or m.all():
        return np.zeros(m.shape, bool)
    inside = ndi.distance_transform_edt(m, sampling=sp)
    outside = ndi.distance_transform_edt(~m, sampling=sp)
    return np.where(m, inside, outside) <= width_mm


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve of ``scores`` as a detector of ``labels`` (Mann-Whitney U).

    scores: float array; labels: bool array of the same size. Ties count one half. Returns
    nan if either class is empty.
    """
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, bool).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
