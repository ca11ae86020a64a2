"""Metrics in millimetres and their statistics over cases.

Conventions, each one tested in ``tests/test_metrics.py``:
* ``pred``, ``ref``: masks of equal shape (any axes, any dtype; nonzero is foreground).
  ``spacing_mm``: voxel size in mm, one per axis or one for all. Distances: centre to centre.
* **Surface voxels** of a mask: its voxels with a face neighbour outside it, the outside of
  the array counting as background (:func:`lungseg_utils.anatomy.boundary` ``"inner"``,
  MONAI's ``get_mask_edges``).
* **Directed surface distances** A -> B: for each surface voxel of A, the distance to the
  nearest surface voxel of B (``distance_transform_edt(~surface(B), sampling=spacing_mm)``).
* **HD95** follows MONAI's ``compute_hausdorff_distance(percentile=95)``: the larger of the
  two directed 95th percentiles. (medpy's ``hd95`` pools both sets first; it can be smaller.)
* **ASSD** is the mean of the pooled distances of both directions (Heimann et al. 2009;
  MONAI's ``compute_average_surface_distance(symmetric=True)``).
* **Empty masks**: both empty: Dice = IoU = 1, distances 0; exactly one empty: Dice = IoU = 0,
  distances ``inf``; an empty reference: relative volume error ``nan``."""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from scipy import ndimage as ndi

from .anatomy import boundary, bounding_box, check_spacing
from .errors import LungsegInputError


def _pair(pred, ref) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.asarray(pred) != 0, np.asarray(ref) != 0
    if pred.shape != ref.shape:
        raise LungsegInputError(f"pred shape {pred.shape} differs from ref shape {ref.shape}.")
    return pred, ref


def dice(pred, ref) -> float:
    """Dice coefficient 2|P∩R| / (|P| + |R|): a float in [0, 1]; 1.0 if both masks are empty."""
    pred, ref = _pair(pred, ref)
    total = int(pred.sum()) + int(ref.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & ref).sum()) / total


def iou(pred, ref) -> float:
    """Intersection over union (Jaccard index) |P∩R| / |P∪R|: in [0, 1]; 1.0 if both are empty."""
    pred, ref = _pair(pred, ref)
    union = int((pred | ref).sum())
    return 1.0 if union == 0 else int((pred & ref).sum()) / union


def _distances_mm(pred, ref, spacing_mm) -> tuple[float, float]:
    """(HD95, ASSD) in mm under the module's conventions, empty masks included."""
    pred, ref = _pair(pred, ref)
    spacing = check_spacing(spacing_mm, pred.ndim)
    if not pred.any() or not ref.any():
        value = 0.0 if pred.any() == ref.any() else float("inf")
        return value, value
    box = bounding_box(pred | ref, margin=1)      # cropping to it changes no distance
    sp, sr = boundary(pred[box], "inner"), boundary(ref[box], "inner")
    d_pr = ndi.distance_transform_edt(~sr, sampling=spacing)[sp]   # directed: pred -> ref
    d_rp = ndi.distance_transform_edt(~sp, sampling=spacing)[sr]   # ref -> pred
    hd95 = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    return float(hd95), float(np.concatenate([d_pr, d_rp]).mean())


def hd95_mm(pred, ref, spacing_mm) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (**HD95** in the module's conventions)."""
    return _distances_mm(pred, ref, spacing_mm)[0]


def assd_mm(pred, ref, spacing_mm) -> float:
    """Average symmetric surface distance in mm (**ASSD** in the module's conventions)."""
    return _distances_mm(pred, ref, spacing_mm)[1]


def volume_ml(mask, spacing_mm) -> float:
    """Volume of a mask (any shape; nonzero = inside) in ml: voxel count x voxel volume."""
    mask = np.asarray(mask) != 0
    return float(mask.sum()) * float(np.prod(check_spacing(spacing_mm, mask.ndim))) / 1000.0


def relative_volume_error(pred, ref) -> float:
    """Signed relative volume error (V_pred - V_ref) / V_ref, a fraction (0.1 = 10 % too
    large); ``nan`` if ``ref`` is empty. Both masks share one grid: voxel counts are volumes."""
    pred, ref = _pair(pred, ref)
    n_ref = int(ref.sum())
    return float("nan") if n_ref == 0 else (int(pred.sum()) - n_ref) / n_ref


#: One metric: how it is printed, which values are worse (``worst``: ``"min"``, ``"max"`` or
#: ``"absmax"``, as in :func:`summarise`) and ``compute(pred, ref, (hd95_mm, assd_mm))``, a float.
Metric = namedtuple("Metric", "label unit worst decimals compute")

#: The registry of evaluation metrics, which :func:`evaluate_masks`, :func:`summarise`,
#: notebook 05 and the report go through. Adding a metric is one entry here.
METRICS: dict[str, Metric] = {
    "dice": Metric("Dice", "", "min", 3, lambda p, r, d: dice(p, r)),
    "iou": Metric("IoU", "", "min", 3, lambda p, r, d: iou(p, r)),
    "hd95_mm": Metric("HD95", "mm", "max", 1, lambda p, r, d: d[0]),
    "assd_mm": Metric("ASSD", "mm", "max", 1, lambda p, r, d: d[1]),
    "volume_error_pct": Metric("volume error", "%", "absmax", 1,
                               lambda p, r, d: 100.0 * relative_volume_error(p, r))}


def evaluate_masks(pred, ref, spacing_mm) -> dict:
    """Every metric of :data:`METRICS` of one prediction against its reference, by key
    (floats), and the two volumes in ml (``volume_pred_ml``, ``volume_ref_ml``)."""
    pred, ref = _pair(pred, ref)
    distances = _distances_mm(pred, ref, spacing_mm)
    out = {key: float(m.compute(pred, ref, distances)) for key, m in METRICS.items()}
    return dict(out, volume_pred_ml=volume_ml(pred, spacing_mm),
                volume_ref_ml=volume_ml(ref, spacing_mm))


# ----------------------------------------------------------------------------- statistics
def summarise(rows: list[dict], key: str, worst: str = "auto") -> dict:
    """Summary of ``rows[i][key]`` over cases (each row has a ``case_id``): ``n``, ``mean``,
    ``sd`` (ddof=1; nan if n < 2), ``median``, ``min``, ``max``, ``worst_value`` and
    ``worst_case_id``. NaN values are left out; ``inf`` is kept, so a failed case shows.
    ``worst``: ``"min"`` (lower is worse), ``"max"``, ``"absmax"`` (farther from 0 is worse)
    or ``"auto"``: the metric's own (:data:`METRICS`); for other keys min for dice/iou,
    absmax for keys holding ``error``, max otherwise."""
    if not rows:
        raise LungsegInputError("summarise: rows is empty.")
    if any(key not in r or "case_id" not in r for r in rows):
        raise LungsegInputError(f"summarise: every row needs 'case_id' and {key!r}.")
    if worst not in ("auto", "min", "max", "absmax"):
        raise LungsegInputError(f"summarise: worst={worst!r} must be auto, min, max or absmax.")
    if worst == "auto":
        worst = (METRICS[key].worst if key in METRICS else
                 "min" if key.startswith(("dice", "iou")) else
                 "absmax" if "error" in key else "max")
    kept = [r for r in rows if not np.isnan(float(r[key]))]
    vals = np.array([float(r[key]) for r in kept])
    if not kept:
        return dict(n=0, mean=np.nan, sd=np.nan, median=np.nan, min=np.nan, max=np.nan,
                    worst_case_id=None, worst_value=np.nan)
    i = int(np.argmax({"min": -vals, "max": vals, "absmax": np.abs(vals)}[worst]))
    with np.errstate(invalid="ignore"):
        sd = float(np.std(vals, ddof=1)) if vals.size > 1 else float("nan")
    return dict(n=int(vals.size), mean=float(np.mean(vals)), sd=sd,
                median=float(np.median(vals)), min=float(vals.min()), max=float(vals.max()),
                worst_case_id=kept[i]["case_id"], worst_value=float(vals[i]))


def paired_bootstrap_ci(a, b, n_boot: int = 10000, ci: float = 0.95, seed: int = 0) -> dict:
    """Percentile-bootstrap interval (coverage ``ci``, ``n_boot`` resamples of the cases,
    seeded) of the mean paired difference ``b - a``; ``a``, ``b``: one metric of two methods
    on the same cases, shape (n_cases,). Returns ``{"mean_diff", "lo", "hi"}``."""
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


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve of ``scores`` (floats) as a detector of ``labels`` (bools of
    the same size), by Mann-Whitney U: ties count one half; nan if either class is empty."""
    s, y = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels, bool).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata   # here, not on import: scipy.stats is slow to import
    return float((rankdata(s)[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
