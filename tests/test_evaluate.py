"""Tests of lungseg_utils.evaluate: metrics against analytic answers and an independent
brute-force implementation, post-processing on synthetic masks, and the classical baseline on
phantoms (including a cut field of view) and, where present, on the real LCTSC cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from lungseg_utils import config
from lungseg_utils.errors import LungsegInputError
from lungseg_utils.evaluate import (assd_mm, classical_lung_mask, dice, evaluate_masks, hd95_mm,
                                    iou, paired_bootstrap_ci, postprocess_lungs,
                                    relative_volume_error, summarise, surface_voxels, volume_ml)

ANISO = (0.8, 1.3, 2.1)


# ----------------------------------------------------------------------------- helpers
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


# ----------------------------------------------------------------------------- surfaces
def test_surface_voxels_definition():
    assert surface_voxels(cube((5, 5, 5), (1, 1, 1), 3)).sum() == 26      # all but the centre
    assert surface_voxels(cube((5, 5, 5), (2, 2, 2), 1)).sum() == 1
    assert surface_voxels(np.ones((4, 4, 4))).sum() == 64 - 8            # array edge = outside
    sq = np.zeros((7, 7), bool)
    sq[1:6, 1:6] = True
    assert surface_voxels(sq).sum() == 16                                 # any dimension
    assert not surface_voxels(np.zeros((3, 3, 3))).any()
    assert surface_voxels(np.ones((4, 4, 4))).dtype == bool


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_distances_match_brute_force(seed):
    shape = (18, 22, 14)
    a, b = blob(shape, seed), blob(shape, seed + 100)
    assert a.any() and b.any()
    np.testing.assert_array_equal(surface_voxels(a), brute_surface(a))
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


def test_distances_ignore_empty_margin():
    a, b = blob((16, 16, 16), 5), blob((16, 16, 16), 6)
    big_a, big_b = np.zeros((40, 30, 24), bool), np.zeros((40, 30, 24), bool)
    big_a[10:26, 7:23, 4:20], big_b[10:26, 7:23, 4:20] = a, b
    assert hd95_mm(big_a, big_b, ANISO) == pytest.approx(hd95_mm(a, b, ANISO))
    assert assd_mm(big_a, big_b, ANISO) == pytest.approx(assd_mm(a, b, ANISO))


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
    pred = m.copy()
    pred[10, :10, :10] = True                                              # +100 voxels
    assert relative_volume_error(pred, m) == pytest.approx(0.1)
    assert relative_volume_error(m, pred) == pytest.approx(-100 / 1100)
    r = evaluate_masks(pred, m, (0.5, 1.0, 2.0))
    assert set(r) == {"dice", "iou", "hd95_mm", "assd_mm", "volume_pred_ml", "volume_ref_ml",
                      "volume_error_pct"}
    assert r["volume_pred_ml"] == pytest.approx(1.1) and r["volume_ref_ml"] == pytest.approx(1.0)
    assert r["volume_error_pct"] == pytest.approx(10.0)
    assert r["dice"] == pytest.approx(dice(pred, m)) and r["hd95_mm"] == hd95_mm(pred, m, (0.5, 1, 2))


def test_bad_inputs_raise():
    with pytest.raises(LungsegInputError, match="shape"):
        dice(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)))
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
    one = summarise(ROWS[:1], "dice")
    assert one["n"] == 1 and math.isnan(one["sd"])
    assert summarise([{"case_id": "x", "hd95_mm": math.inf}, {"case_id": "y", "hd95_mm": 1.0}],
                     "hd95_mm")["mean"] == math.inf                     # a failure shows
    with pytest.raises(LungsegInputError):
        summarise([], "dice")
    with pytest.raises(LungsegInputError):
        summarise([{"dice": 1.0}], "dice")


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


# ----------------------------------------------------------------------------- post-processing
def two_lungs(shape=(40, 30, 30)):
    grid = np.indices(shape)
    left = ((grid[0] - 11) / 8) ** 2 + ((grid[1] - 15) / 11) ** 2 + ((grid[2] - 15) / 12) ** 2 <= 1
    right = ((grid[0] - 29) / 7) ** 2 + ((grid[1] - 15) / 10) ** 2 + ((grid[2] - 15) / 11) ** 2 <= 1
    return left, right


def test_postprocess_keeps_both_lungs_removes_specks_fills_holes():
    left, right = two_lungs()
    lungs = left | right
    mask = lungs.astype(np.uint8)
    mask[0, 0, 0] = mask[39, 29, 29] = mask[20, 2, 2] = 1                # specks
    mask[11, 15, 15] = 0                                                  # 3D enclosed hole
    mask[29, 15, :] = 0             # a vessel along z: open in 3D, closed in most axial slices
    out = postprocess_lungs(mask)
    assert out.dtype == np.uint8 and out.shape == mask.shape
    # The vessel stays open only in a slice where a 4-neighbour of it is outside the lungs.
    zs = np.flatnonzero(lungs[29, 15])
    open_in_slice = [z for z in zs if not (lungs[28, 15, z] and lungs[30, 15, z]
                                           and lungs[29, 14, z] and lungs[29, 16, z])]
    expected = lungs.copy()
    expected[29, 15, open_in_slice] = False
    assert 0 < len(open_in_slice) <= 4 and len(zs) > 15
    np.testing.assert_array_equal(out, expected.astype(np.uint8))


def test_postprocess_second_component_threshold():
    left, right = two_lungs()
    big = cube(left.shape, (2, 2, 2), 12)                                # 1728 voxels
    small = cube(left.shape, (25, 2, 2), 5)                              # 125 voxels: 7 %
    assert postprocess_lungs(big | small).sum() == big.sum()
    assert postprocess_lungs(big | small, min_fraction=0.05).sum() == big.sum() + small.sum()
    both = postprocess_lungs(left | right)
    assert both.sum() == (left | right).sum()                            # genuine second lung
    assert postprocess_lungs(left | right, max_components=1).sum() == max(left.sum(), right.sum())
    assert not postprocess_lungs(np.zeros((5, 5, 5))).any()


def test_postprocess_axis_argument():
    left, right = two_lungs()
    mask = left | right
    mask[29, :, 15] = False                                              # channel along axis 1
    along_last = postprocess_lungs(np.moveaxis(mask, 1, 2))
    np.testing.assert_array_equal(np.moveaxis(along_last, 2, 1), postprocess_lungs(mask, axis=1))
    across_y, across_z = postprocess_lungs(mask, axis=1), postprocess_lungs(mask)
    assert across_z.sum() == mask.sum()                  # a cut in every axial slice: kept
    assert across_y.sum() > mask.sum() + 10              # a hole in every coronal slice: filled
    assert not (mask & ~across_y.astype(bool)).any()


# ----------------------------------------------------------------------------- classical baseline
def phantom(**kwargs):
    synthetic = pytest.importorskip("lungseg_utils.synthetic")
    return synthetic.make_phantom(**kwargs)


@pytest.mark.parametrize("kwargs", [
    dict(),                                                      # 340 mm body on 320 mm: cut
    dict(body_width_mm=300.0, seed=1),                           # whole body in view
    dict(shape=(44, 64, 40), body_width_mm=400.0, seed=2),       # lungs touch sides, top, bottom
    dict(shape=(96, 96, 48), spacing_mm=(3.0, 3.0, 6.0), seed=3),  # anisotropic grid
])
def test_classical_on_phantoms(kwargs):
    ct, ref, _ = phantom(**kwargs)
    spacing = kwargs.get("spacing_mm", (5.0, 5.0, 5.0))
    pred = classical_lung_mask(ct, spacing)
    assert pred.dtype == np.uint8 and pred.shape == ct.shape
    assert dice(pred, ref) > 0.98
    for ax in range(3):                                          # wherever the lungs meet an
        for side in (0, -1):                                     # edge, so does the prediction
            if ref.take(side, axis=ax).sum() > 20:
                assert dice(pred.take(side, axis=ax), ref.take(side, axis=ax)) > 0.9


def test_classical_removes_trachea():
    ct, ref, affine = phantom(seed=4)
    world = np.einsum("ij,j...->i...", affine[:3, :3], np.indices(ct.shape)) + affine[:3, 3, None, None, None]
    x, y, z = world
    trachea = (x ** 2 + y ** 2 <= 9.0 ** 2) & (z >= 30.0)
    bronchi = np.zeros_like(trachea)
    for side in (-1, 1):                                         # from the carina into each lung
        t = np.clip((x * side) / 60.0, 0, 1)
        bronchi |= ((x * side >= 0) & ((z - 30.0 * (1 - t)) ** 2 + y ** 2 <= 6.0 ** 2) & (np.abs(x) <= 60))
    airway = (trachea | bronchi) & (ref == 0)
    ct = ct.copy()
    ct[airway] = -1000.0
    pred = classical_lung_mask(ct, (5.0, 5.0, 5.0))
    assert dice(pred, ref) > 0.97
    above_lungs = trachea & (z > z[ref > 0].max())
    assert above_lungs.sum() > 20 and not pred[above_lungs].any()
    assert pred[airway].sum() < 0.2 * airway.sum()


def test_classical_axis_and_degenerate_inputs():
    ct, ref, _ = phantom(shape=(48, 48, 40), seed=5)
    a = classical_lung_mask(ct, (5.0, 5.0, 5.0))
    b = classical_lung_mask(np.moveaxis(ct, 2, 0), (5.0, 5.0, 5.0), axis=0)
    np.testing.assert_array_equal(np.moveaxis(b, 0, 2), a)
    assert not classical_lung_mask(np.full((20, 20, 20), -1000.0), (5, 5, 5)).any()
    assert not classical_lung_mask(np.full((20, 20, 20), 40.0), (5, 5, 5)).any()
    with pytest.raises(LungsegInputError):
        classical_lung_mask(np.zeros((20, 20)), (5, 5))


def _real_cases(folder, n=None):
    io = pytest.importorskip("lungseg_utils.io")
    if folder is None or not folder.is_dir():
        pytest.skip("real LCTSC data not present")
    return io.load_cases(folder, max_cases=n)


@pytest.fixture(scope="module")
def lctsc64():
    return _real_cases(config.shared_data_root() / "lctsc64")


def test_classical_on_real_lctsc64(lctsc64):
    """Measured on the nine cases: Dice 0.966-0.987 (mean 0.979), HD95 5.0 mm each."""
    rows = [dict(case_id=c.case_id, **evaluate_masks(classical_lung_mask(c.ct_hu, c.spacing_mm),
                                                     c.mask, c.spacing_mm)) for c in lctsc64]
    assert min(r["dice"] for r in rows) > 0.95
    assert summarise(rows, "dice")["mean"] > 0.97
    assert max(r["hd95_mm"] for r in rows) <= 10.0


def test_classical_on_real_lctsc64_cut_through_the_lungs(lctsc64):
    """Crop each case so that the lateral image edges cut both lungs and the body."""
    for c in lctsc64[:4]:
        xs = np.flatnonzero(c.mask.any(axis=(1, 2)))
        box = slice(xs[0] + 2, xs[-1] - 1)
        ct, ref = c.ct_hu[box], c.mask[box]
        assert ref[0].any() and ref[-1].any()
        assert dice(classical_lung_mask(ct, c.spacing_mm), ref) > 0.95


def test_classical_on_one_native_scan():
    """Measured on the nine native scans: Dice 0.963-0.985, HD95 2.8-6.0 mm."""
    folder = config.native_data_dir()
    cases = _real_cases(folder, n=1)
    c = cases[0]
    r = evaluate_masks(classical_lung_mask(c.ct_hu, c.spacing_mm), c.mask, c.spacing_mm)
    assert r["dice"] > 0.95 and r["hd95_mm"] <= 10.0
