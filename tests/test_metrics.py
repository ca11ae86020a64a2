"""lungseg_utils.metrics against analytic answers and an independent brute-force
implementation: overlap, surface distances (MONAI's conventions), volumes, empty masks, and
the statistics over cases (summary, paired bootstrap, ROC AUC)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from lungseg_utils.anatomy import boundary
from lungseg_utils.errors import LungsegInputError
from lungseg_utils.metrics import (
    assd_mm,
    dice,
    evaluate_masks,
    hd95_mm,
    iou,
    paired_bootstrap_ci,
    relative_volume_error,
    roc_auc,
    summarise,
    volume_ml,
)

ANISO = (0.8, 1.3, 2.1)


def cube(shape, lo, side):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, a + side) for a in lo)] = True
    return m


def ball(shape, centre_vox, radius_mm, spacing):
    grid = np.indices(shape, dtype=float)
    r2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre_vox, spacing))
    return r2 <= radius_mm ** 2


def brute_surface(mask):
    """Surface by explicit neighbour checks on a zero-padded copy (independent of erosion)."""
    p = np.pad(mask.astype(bool), 1)
    core = p[1:-1, 1:-1, 1:-1]
    outside_neighbour = np.zeros_like(core)
    for ax in range(3):
        for shift in (-1, 1):
            outside_neighbour |= ~np.roll(p, shift, axis=ax)[1:-1, 1:-1, 1:-1]
    return core & outside_neighbour


def brute_directed(a, b, spacing):
    pa = np.argwhere(brute_surface(a)) * np.asarray(spacing)
    pb = np.argwhere(brute_surface(b)) * np.asarray(spacing)
    return cKDTree(pb).query(pa)[0]


def blob(shape, seed, level=0.6):
    rng = np.random.default_rng(seed)
    return ndi.gaussian_filter(rng.normal(size=shape), 2.0) > level * 0.1


# ----------------------------------------------------------------------------- overlap
@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_shifted_cubes_exact_dice_iou_hd95(axis, k):
    side, shape = 10, (20, 20, 20)
    a = cube(shape, (4, 4, 4), side)
    lo = [4, 4, 4]
    lo[axis] += k
    b = cube(shape, lo, side)
    assert dice(a, b) == pytest.approx(1 - k / side, abs=1e-12)
    assert iou(a, b) == pytest.approx((side - k) / (side + k), abs=1e-12)
    # Every point of the leading face is exactly k voxels from the other cube's face, and
    # no surface point is farther; that face is 100 of 488 surface voxels (> 5 %).
    assert hd95_mm(a, b, ANISO) == pytest.approx(k * ANISO[axis], abs=1e-9)
    assd = assd_mm(a, b, ANISO)
    assert 0 < assd < k * ANISO[axis]


def test_dice_iou_known_values_and_dtypes():
    a = np.zeros((4, 4, 4), np.uint8)
    b = np.zeros((4, 4, 4), bool)
    a[0, 0, :3] = 1          # 3 voxels
    b[0, 0, 1:] = True       # 3 voxels, overlap 2
    assert dice(a, b) == pytest.approx(2 * 2 / 6)
    assert iou(a, b) == pytest.approx(2 / 4)
    assert dice(a * 7, b) == dice(a, b)          # any nonzero label is foreground
    half, quarter = np.zeros((4, 4, 4), bool), np.zeros((4, 4, 4), bool)
    half[:2], quarter[:1] = True, True
    assert (dice(half, quarter), iou(half, quarter)) == pytest.approx((2 * 16 / 48, 16 / 32))


# ----------------------------------------------------------------------------- surfaces
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_distances_match_brute_force(seed):
    shape = (18, 22, 14)
    a, b = blob(shape, seed), blob(shape, seed + 100)
    assert a.any() and b.any()
    np.testing.assert_array_equal(boundary(a, "inner"), brute_surface(a))   # the surface used
    d_ab, d_ba = brute_directed(a, b, ANISO), brute_directed(b, a, ANISO)
    expect_hd95 = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    assert hd95_mm(a, b, ANISO) == pytest.approx(expect_hd95, abs=1e-9)
    assert assd_mm(a, b, ANISO) == pytest.approx(np.concatenate([d_ab, d_ba]).mean(), abs=1e-9)


def test_hd95_is_max_of_directed_percentiles_not_pooled():
    """A far speck worth 8 % of the reference's surface: MONAI's convention sees it, medpy's
    pooled percentile (4 % of both sets) does not."""
    shape = (30, 12, 12)
    pred = cube(shape, (1, 2, 2), 8)
    ref = pred | cube(shape, (24, 4, 4), 3)
    d_pr, d_rp = brute_directed(pred, ref, (1, 1, 1)), brute_directed(ref, pred, (1, 1, 1))
    pooled = np.percentile(np.concatenate([d_pr, d_rp]), 95)
    monai = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    assert pooled == 0.0 and monai > 10.0
    assert hd95_mm(pred, ref, (1, 1, 1)) == pytest.approx(monai)
    assert hd95_mm(ref, pred, (1, 1, 1)) == pytest.approx(monai)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.6, 0.9, 1.2)])
def test_concentric_spheres_distance_is_radius_difference(spacing):
    r_small, r_big = 7.0, 11.0
    shape = tuple(int(2 * r_big / s) + 5 for s in spacing)
    centre = tuple((n - 1) / 2 for n in shape)
    small, big = ball(shape, centre, r_small, spacing), ball(shape, centre, r_big, spacing)
    for value in (hd95_mm(small, big, spacing), assd_mm(small, big, spacing)):
        assert abs(value - (r_big - r_small)) <= max(spacing)


def test_metric_symmetry_identity_and_scaling():
    a, b = blob((16, 16, 16), 3), blob((16, 16, 16), 4)
    for f in (dice, iou):
        assert f(a, b) == f(b, a)
        assert f(a, a) == 1.0
    for f in (hd95_mm, assd_mm):
        assert f(a, b, ANISO) == pytest.approx(f(b, a, ANISO))
        assert f(a, a, ANISO) == 0.0
        assert f(a, b, np.multiply(ANISO, 2.0)) == pytest.approx(2 * f(a, b, ANISO))
        assert f(a, b, 1.5) == pytest.approx(f(a, b, (1.5, 1.5, 1.5)))    # one number for all


def test_distances_ignore_empty_margin():
    a, b = blob((16, 16, 16), 5), blob((16, 16, 16), 6)
    big_a, big_b = np.zeros((40, 30, 24), bool), np.zeros((40, 30, 24), bool)
    big_a[10:26, 7:23, 4:20], big_b[10:26, 7:23, 4:20] = a, b
    assert hd95_mm(big_a, big_b, ANISO) == pytest.approx(hd95_mm(a, b, ANISO))
    assert assd_mm(big_a, big_b, ANISO) == pytest.approx(assd_mm(a, b, ANISO))


def test_mask_touching_the_array_edge_has_surface_there():
    """The outside of the array is background: a mask filling a face has surface on it."""
    full = np.ones((6, 6, 6), bool)
    inner = cube((6, 6, 6), (1, 1, 1), 4)
    d_fi, d_if = brute_directed(full, inner, ANISO), brute_directed(inner, full, ANISO)
    assert len(d_fi) == 6 ** 3 - 4 ** 3
    assert hd95_mm(full, inner, ANISO) == pytest.approx(max(np.percentile(d_fi, 95),
                                                            np.percentile(d_if, 95)))
    assert assd_mm(full, inner, ANISO) == pytest.approx(np.concatenate([d_fi, d_if]).mean())


def test_distances_in_two_dimensions():
    a = np.zeros((8, 8), bool)
    a[1:5, 1:5] = True
    b = np.roll(a, 2, axis=0)
    assert hd95_mm(a, b, (0.5, 3.0)) == pytest.approx(1.0)       # 2 rows of 0.5 mm
    assert hd95_mm(a, np.roll(a, 1, axis=1), (0.5, 3.0)) == pytest.approx(3.0)


# ----------------------------------------------------------------------------- empty masks
def test_empty_mask_conventions():
    empty, full = np.zeros((6, 6, 6), bool), cube((6, 6, 6), (1, 1, 1), 3)
    both = evaluate_masks(empty, empty, (1, 1, 1))
    assert (both["dice"], both["iou"], both["hd95_mm"], both["assd_mm"]) == (1.0, 1.0, 0.0, 0.0)
    assert math.isnan(both["volume_error_pct"])
    for pred, ref in ((empty, full), (full, empty)):
        r = evaluate_masks(pred, ref, (1, 1, 1))
        assert r["dice"] == 0.0 and r["iou"] == 0.0
        assert r["hd95_mm"] == math.inf and r["assd_mm"] == math.inf
    assert relative_volume_error(empty, full) == -1.0
    assert math.isnan(relative_volume_error(full, empty))


# ----------------------------------------------------------------------------- volumes
def test_volumes_and_relative_error():
    m = cube((12, 12, 12), (0, 0, 0), 10)
    assert volume_ml(m, (0.5, 1.0, 2.0)) == pytest.approx(1.0)             # 1000 mm^3
    assert volume_ml(m, 1.0) == pytest.approx(1.0)
    pred = m.copy()
    pred[10, :10, :10] = True                                              # +100 voxels
    assert relative_volume_error(pred, m) == pytest.approx(0.1)
    assert relative_volume_error(m, pred) == pytest.approx(-100 / 1100)
    r = evaluate_masks(pred, m, (0.5, 1.0, 2.0))
    assert set(r) == {"dice", "iou", "hd95_mm", "assd_mm", "volume_pred_ml", "volume_ref_ml",
                      "volume_error_pct"}
    assert r["volume_pred_ml"] == pytest.approx(1.1) and r["volume_ref_ml"] == pytest.approx(1.0)
    assert r["volume_error_pct"] == pytest.approx(10.0)
    assert r["dice"] == pytest.approx(dice(pred, m)) and r["iou"] == pytest.approx(iou(pred, m))
    assert r["hd95_mm"] == hd95_mm(pred, m, (0.5, 1, 2))
    assert r["assd_mm"] == assd_mm(pred, m, (0.5, 1, 2))


def test_bad_inputs_raise():
    with pytest.raises(LungsegInputError, match="shape"):
        dice(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)))
    with pytest.raises(LungsegInputError, match="shape"):
        evaluate_masks(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)), 1.0)
    with pytest.raises(LungsegInputError, match="spacing"):
        hd95_mm(np.ones((3, 3, 3)), np.ones((3, 3, 3)), (1.0, 0.0, 1.0))
    with pytest.raises(LungsegInputError):
        volume_ml(np.ones((3, 3, 3)), (1.0, 1.0))


# ----------------------------------------------------------------------------- statistics
ROWS = [{"case_id": "a", "dice": 0.95, "hd95_mm": 4.0, "volume_error_pct": -2.0},
        {"case_id": "b", "dice": 0.90, "hd95_mm": 9.0, "volume_error_pct": 1.0},
        {"case_id": "c", "dice": 0.97, "hd95_mm": 3.0, "volume_error_pct": 5.0},
        {"case_id": "d", "dice": float("nan"), "hd95_mm": 2.0, "volume_error_pct": 0.5}]


def test_summarise():
    s = summarise(ROWS, "dice")
    vals = [0.95, 0.90, 0.97]
    assert s["n"] == 3
    assert s["mean"] == pytest.approx(np.mean(vals))
    assert s["sd"] == pytest.approx(np.std(vals, ddof=1))
    assert (s["median"], s["min"], s["max"]) == (0.95, 0.90, 0.97)
    assert (s["worst_case_id"], s["worst_value"]) == ("b", 0.90)
    assert summarise(ROWS, "hd95_mm")["worst_case_id"] == "b"            # higher is worse
    assert summarise(ROWS, "volume_error_pct")["worst_case_id"] == "c"   # farthest from 0
    assert summarise(ROWS, "hd95_mm", worst="min")["worst_case_id"] == "d"
    assert summarise(ROWS, "volume_error_pct", worst="max")["worst_case_id"] == "c"
    assert summarise(ROWS, "dice", worst="absmax")["worst_case_id"] == "c"
    one = summarise(ROWS[:1], "dice")
    assert one["n"] == 1 and math.isnan(one["sd"])
    assert summarise([{"case_id": "x", "hd95_mm": math.inf}, {"case_id": "y", "hd95_mm": 1.0}],
                     "hd95_mm")["mean"] == math.inf                     # a failure shows
    none = summarise([{"case_id": "x", "dice": math.nan}], "dice")
    assert none["n"] == 0 and none["worst_case_id"] is None and math.isnan(none["mean"])
    with pytest.raises(LungsegInputError):
        summarise([], "dice")
    with pytest.raises(LungsegInputError):
        summarise([{"dice": 1.0}], "dice")
    with pytest.raises(LungsegInputError, match="worst"):
        summarise(ROWS, "dice", worst="median")


def test_paired_bootstrap_ci():
    a = np.array([0.90, 0.92, 0.95, 0.93])
    const = paired_bootstrap_ci(a, a + 0.02, n_boot=500)
    assert const["mean_diff"] == pytest.approx(0.02)
    assert const["lo"] == pytest.approx(0.02) and const["hi"] == pytest.approx(0.02)

    rng = np.random.default_rng(1)
    x = rng.normal(0.9, 0.02, size=40)
    y = x + rng.normal(0.01, 0.01, size=40)
    r = paired_bootstrap_ci(x, y, n_boot=4000, seed=3)
    assert r == paired_bootstrap_ci(x, y, n_boot=4000, seed=3)           # reproducible
    d = y - x
    assert r["mean_diff"] == pytest.approx(d.mean())
    assert r["lo"] < d.mean() < r["hi"]
    width_normal = 2 * 1.96 * d.std(ddof=1) / np.sqrt(d.size)
    assert (r["hi"] - r["lo"]) == pytest.approx(width_normal, rel=0.2)
    flipped = paired_bootstrap_ci(y, x, n_boot=4000, seed=3)             # b - a negated
    assert flipped["lo"] == pytest.approx(-r["hi"]) and flipped["hi"] == pytest.approx(-r["lo"])
    narrow = paired_bootstrap_ci(x, y, n_boot=4000, ci=0.5, seed=3)
    assert r["lo"] < narrow["lo"] < narrow["hi"] < r["hi"]
    with pytest.raises(LungsegInputError):
        paired_bootstrap_ci([1, 2, 3], [1, 2])
    with pytest.raises(LungsegInputError):
        paired_bootstrap_ci([1, 2], [1, 2], ci=1.5)


def test_roc_auc_known_values():
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert roc_auc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    # one of four positive-negative pairs misordered
    assert roc_auc([0.1, 0.6, 0.5, 0.9], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert np.isnan(roc_auc([0.1, 0.2], [1, 1]))
    # against the pairwise definition on random scores with ties
    rng = np.random.default_rng(0)
    s, y = rng.integers(0, 5, 60).astype(float), rng.random(60) < 0.4
    pairs = (s[y][:, None] > s[~y][None, :]) + 0.5 * (s[y][:, None] == s[~y][None, :])
    assert roc_auc(s, y) == pytest.approx(pairs.mean())
    assert roc_auc(s.reshape(6, 10), y.reshape(6, 10)) == pytest.approx(pairs.mean())  # any shape
