"""lungseg_utils.anatomy: components, holes, boundaries, the body, airways, post-processing and
the classical baseline, on synthetic masks and phantoms (a cut field of view included) and,
where present, on the real LCTSC cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from lungseg_utils import anatomy, config, dataio, geometry, synthetic
from lungseg_utils.anatomy import (
    airway,
    body_mask,
    boundary,
    boundary_band,
    check_spacing,
    classical_lung_mask,
    fill_holes,
    largest_components,
    postprocess_lungs,
)
from lungseg_utils.errors import LungsegInputError
from lungseg_utils.metrics import dice, evaluate_masks, summarise


def cube(shape, lo, side):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, a + side) for a in lo)] = True
    return m


def face_neighbours_differ(mask):
    """Voxels with a face neighbour of the other kind, the array's outside counting as
    background: explicit shifts of a zero-padded copy (independent of erosion/dilation)."""
    p = np.pad(mask.astype(bool), 1)
    core = tuple(slice(1, -1) for _ in range(mask.ndim))
    out = np.zeros(mask.shape, bool)
    for ax in range(mask.ndim):
        for shift in (-1, 1):
            out |= np.roll(p, shift, axis=ax)[core] != p[core]
    return out


# ----------------------------------------------------------------------------- spacing
def test_check_spacing():
    assert check_spacing(2.5, 3) == (2.5, 2.5, 2.5)
    assert check_spacing([1, 2, 3], 3) == (1.0, 2.0, 3.0)
    assert check_spacing(np.array([0.5, 0.7]), 2) == (0.5, 0.7)
    for bad in ((1.0, 0.0, 1.0), (1.0, 2.0), (1.0, np.nan, 1.0), (-1.0, 1.0, 1.0)):
        with pytest.raises(LungsegInputError, match="spacing_mm"):
            check_spacing(bad, 3)


# ----------------------------------------------------------------------------- boundaries
def test_inner_boundary_definition():
    assert boundary(cube((5, 5, 5), (1, 1, 1), 3)).sum() == 26            # all but the centre
    assert boundary(cube((5, 5, 5), (2, 2, 2), 1)).sum() == 1
    assert boundary(np.ones((4, 4, 4))).sum() == 64 - 8                   # array edge = outside
    sq = np.zeros((7, 7), bool)
    sq[1:6, 1:6] = True
    assert boundary(sq).sum() == 16                                        # any dimension
    assert not boundary(np.zeros((3, 3, 3))).any()
    assert boundary(np.ones((4, 4, 4))).dtype == bool
    assert boundary(cube((5, 5, 5), (1, 1, 1), 3) * 7).sum() == 26        # any nonzero label


def test_outer_and_thick_boundaries():
    m = cube((7, 7, 7), (2, 2, 2), 3)
    outer = boundary(m, "outer")
    assert outer.sum() == 6 * 9                                            # one face layer each side
    assert not (outer & m).any() and outer[1, 3, 3] and not outer[1, 1, 1]  # faces, not corners
    thick = boundary(m, "thick")
    np.testing.assert_array_equal(thick, boundary(m, "inner") | outer)
    with pytest.raises(LungsegInputError, match="mode"):
        boundary(m, "both")


@pytest.mark.parametrize("seed", [0, 1])
def test_boundaries_match_brute_force(seed):
    m = ndi.gaussian_filter(np.random.default_rng(seed).normal(size=(14, 12, 10)), 1.5) > 0.05
    differ = face_neighbours_differ(m)
    np.testing.assert_array_equal(boundary(m, "inner"), m & differ)
    # background voxels next to the mask (the array's outside is background, never marked)
    np.testing.assert_array_equal(boundary(m, "outer"), ~m & differ)
    np.testing.assert_array_equal(boundary(m, "thick"), differ)


def test_boundary_band_width_in_mm():
    m = np.zeros((40, 40, 40), bool)
    m[10:30, 10:30, 10:30] = True
    band = boundary_band(m, (1.0, 1.0, 2.0), 4.0)
    assert band[20, 20, 10] and band[20, 20, 8] and not band[20, 20, 6]   # 2 mm slices
    assert band[10, 20, 20] and band[13, 20, 20] and not band[15, 20, 20]  # 1 mm voxels
    assert band[9, 20, 20] and band[6, 20, 20] and not band[4, 20, 20]    # outside too
    assert not boundary_band(np.zeros((5, 5, 5)), (1, 1, 1), 3.0).any()
    assert not boundary_band(np.ones((5, 5, 5)), (1, 1, 1), 3.0).any()
    with pytest.raises(LungsegInputError):
        boundary_band(m, (1.0, 1.0), 4.0)


# ----------------------------------------------------------------------------- components
def test_largest_components_sizes_fraction_and_connectivity():
    shape = (30, 12, 12)
    big, mid, small = cube(shape, (1, 1, 1), 8), cube(shape, (12, 1, 1), 6), cube(shape, (22, 1, 1), 3)
    m = big | mid | small
    np.testing.assert_array_equal(largest_components(m), big)
    np.testing.assert_array_equal(largest_components(m, 2), big | mid)
    np.testing.assert_array_equal(largest_components(m, 3), m)
    # mid holds 216 / 512 = 42 % of big, small 5 %
    np.testing.assert_array_equal(largest_components(m, 3, min_fraction=0.1), big | mid)
    np.testing.assert_array_equal(largest_components(m, 3, min_voxels=100), big | mid)
    assert not largest_components(m, 1, min_voxels=10_000).any()
    assert not largest_components(np.zeros(shape)).any()
    # two voxels touching at a corner: one component with corners, two with faces only
    diag = np.zeros((3, 3, 3), bool)
    diag[0, 0, 0] = diag[1, 1, 1] = True
    assert largest_components(diag, connectivity=3).sum() == 2
    assert largest_components(diag, connectivity=1).sum() == 1
    assert largest_components(diag).dtype == bool


def test_fill_holes_3d_and_per_slice():
    m = cube((9, 9, 9), (1, 1, 1), 7)
    m[4, 4, 4] = False                                 # enclosed in 3D
    m[2, 2, 1:8] = False                               # a tunnel along z: open in 3D
    filled = fill_holes(m)
    assert filled[4, 4, 4] and filled.dtype == bool
    assert filled[2, 2, 3]                              # closed in each axial slice
    assert not filled[2, 2, 0]                          # outside the cube stays out
    along_x = fill_holes(m, axis=0)                     # slices across x: the tunnel is open
    assert along_x[4, 4, 4] and not along_x[2, 2, 3]


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


# ----------------------------------------------------------------------------- body
def phantom_world(ct, affine):
    """World x, y, z (mm) of every voxel of a phantom."""
    return np.einsum("ij,j...->i...", affine[:3, :3], np.indices(ct.shape)) + affine[:3, 3, None, None, None]


def test_body_mask_encloses_lungs_and_drops_outside_air_and_couch():
    ct, lungs, affine = synthetic.make_phantom(body_width_mm=300.0, seed=1)   # whole body in view
    x, y, _ = phantom_world(ct, affine)
    body = body_mask(ct)
    assert body.dtype == bool and body.shape == ct.shape
    assert body[lungs > 0].all()                                           # lungs are inside
    assert not body[0].any() and not body[-1].any()                        # air beside the body
    couch = ct > 100.0
    couch &= (y < -130.0)                                                  # below the back
    assert couch.sum() > 50 and not body[couch].any()                      # an air gap drops it
    ellipse = (x / 150.0) ** 2 + (y / 120.0) ** 2 <= 0.8                   # well inside the skin
    assert body[ellipse].all()


def test_body_mask_when_the_field_of_view_cuts_the_body():
    ct, lungs, affine = synthetic.make_phantom(shape=(44, 64, 40), body_width_mm=400.0, seed=2)
    assert (lungs[0].any() or lungs[-1].any())                             # lungs reach the edge
    body = body_mask(ct)
    assert body[lungs > 0].all()
    # the air in front of the chest reaches the image edge beyond the body: outside
    _, y, _ = phantom_world(ct, affine)
    assert not body[(y > 140.0) & (ct < -900.0)].any()
    # the axis argument: the same body on a volume with the head-foot axis first
    np.testing.assert_array_equal(np.moveaxis(body_mask(np.moveaxis(ct, 2, 0), axis=0), 0, 2), body)


def test_body_mask_of_empty_and_full_volumes():
    assert not body_mask(np.full((10, 10, 10), -1000.0)).any()
    assert body_mask(np.full((10, 10, 10), 40.0)).all()


# ----------------------------------------------------------------------------- airway
def airway_phantom(seed=4):
    """A phantom with a trachea from the top down to a carina and two main bronchi."""
    ct, ref, affine = synthetic.make_phantom(seed=seed)
    x, y, z = phantom_world(ct, affine)
    trachea = (x ** 2 + y ** 2 <= 9.0 ** 2) & (z >= 30.0)
    bronchi = np.zeros_like(trachea)
    for side in (-1, 1):                                         # from the carina into each lung
        t = np.clip((x * side) / 60.0, 0, 1)
        bronchi |= ((x * side >= 0) & ((z - 30.0 * (1 - t)) ** 2 + y ** 2 <= 6.0 ** 2) & (np.abs(x) <= 60))
    tube = (trachea | bronchi) & (ref == 0)
    ct = ct.copy()
    ct[tube] = -1000.0
    return ct, ref, z, trachea, tube


def test_airway_traces_the_trachea_and_stops_at_the_lungs():
    ct, ref, z, trachea, tube = airway_phantom()
    cand = (ct < -400.0) & body_mask(ct)
    found = airway(cand, (5.0, 5.0, 5.0))
    above_lungs = trachea & (z > z[ref > 0].max())
    assert above_lungs.sum() > 20 and found[above_lungs].all()
    assert found[ref > 0].sum() < 0.02 * ref.sum()                # the lungs are not airway
    assert not airway(np.zeros((8, 8, 8), bool), 5.0).any()


def test_classical_removes_trachea():
    ct, ref, z, trachea, tube = airway_phantom()
    pred = classical_lung_mask(ct, (5.0, 5.0, 5.0))
    assert dice(pred, ref) > 0.97
    above_lungs = trachea & (z > z[ref > 0].max())
    assert above_lungs.sum() > 20 and not pred[above_lungs].any()
    assert pred[tube].sum() < 0.2 * tube.sum()


# ----------------------------------------------------------------------------- classical baseline
@pytest.mark.parametrize("kwargs", [
    dict(),                                                      # 340 mm body on 320 mm: cut
    dict(body_width_mm=300.0, seed=1),                           # whole body in view
    dict(shape=(44, 64, 40), body_width_mm=400.0, seed=2),       # lungs touch sides, top, bottom
    dict(shape=(96, 96, 48), spacing_mm=(3.0, 3.0, 6.0), seed=3),  # anisotropic grid
])
def test_classical_on_phantoms(kwargs):
    ct, ref, _ = synthetic.make_phantom(**kwargs)
    spacing = kwargs.get("spacing_mm", (5.0, 5.0, 5.0))
    pred = classical_lung_mask(ct, spacing)
    assert pred.dtype == np.uint8 and pred.shape == ct.shape
    assert dice(pred, ref) > 0.98
    for ax in range(3):                                          # wherever the lungs meet an
        for side in (0, -1):                                     # edge, so does the prediction
            if ref.take(side, axis=ax).sum() > 20:
                assert dice(pred.take(side, axis=ax), ref.take(side, axis=ax)) > 0.9


def test_classical_rim_adds_partial_volume_voxels():
    ct, ref, _ = synthetic.make_phantom(body_width_mm=300.0, seed=1)
    rim = ndi.binary_dilation(ref > 0) & (ref == 0)
    ct = ct.copy()
    ct[rim & (ct > -100)] = -350.0               # partial volume: between -400 and -300 HU
    with_rim = classical_lung_mask(ct, 5.0)
    without = classical_lung_mask(ct, 5.0, rim_hu=None)
    assert not (without.astype(bool) & ~with_rim.astype(bool)).any()
    assert (with_rim.astype(bool) & rim).sum() > (without.astype(bool) & rim).sum() + 100


def test_classical_axis_and_degenerate_inputs():
    ct, ref, _ = synthetic.make_phantom(shape=(48, 48, 40), seed=5)
    a = classical_lung_mask(ct, (5.0, 5.0, 5.0))
    b = classical_lung_mask(np.moveaxis(ct, 2, 0), (5.0, 5.0, 5.0), axis=0)
    np.testing.assert_array_equal(np.moveaxis(b, 0, 2), a)
    assert dice(a, ref) > 0.95
    assert not classical_lung_mask(np.full((20, 20, 20), -1000.0), (5, 5, 5)).any()
    assert not classical_lung_mask(np.full((20, 20, 20), 40.0), (5, 5, 5)).any()
    with pytest.raises(LungsegInputError):
        classical_lung_mask(np.zeros((20, 20)), (5, 5))


def test_one_body_algorithm_for_baseline_and_model_grid():
    """The model grid is centred with the same body mask the classical baseline uses."""
    from lungseg_utils import geometry

    assert geometry.body_mask is anatomy.body_mask


# ----------------------------------------------------------------------------- real data
def _real_cases(folder, n=None):
    if folder is None or not folder.is_dir():
        pytest.skip("real LCTSC data not present")
    return dataio.load_cases(folder, max_cases=n)


@pytest.fixture(scope="module")
def lctsc64():
    return _real_cases(config.shared_data_root() / "lctsc64")


def test_classical_on_real_lctsc64(lctsc64):
    """Measured on the nine cases: Dice 0.966-0.987 (mean 0.979), HD95 5.0 mm each."""
    rows = [dict(case_id=c.case_id, **evaluate_masks(classical_lung_mask(c.ct_hu, c.spacing_mm),
                                                     c.mask, c.spacing_mm)) for c in lctsc64]
    assert len(rows) == 9
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
    c = _real_cases(config.native_data_dir(), n=1)[0]
    r = evaluate_masks(classical_lung_mask(c.ct_hu, c.spacing_mm, axis=geometry.axial_axis(c.affine)),
                       c.mask, c.spacing_mm)
    assert r["dice"] > 0.95 and r["hd95_mm"] <= 10.0


def test_holes_and_components_in_the_mask_s_box_are_those_of_the_whole_array():
    """Labelling only the mask's bounding box (plus a margin of background for holes) finds
    what scipy finds on the whole array: random masks, touching the edges or not, empty."""
    rng = np.random.default_rng(3)
    for t in range(120):
        shape = tuple(rng.integers(1, 12, 3))
        m = rng.random(shape) < rng.uniform(0.0, 0.8)
        if t % 2:
            m = ndi.binary_opening(m)
        if t % 3 == 0:                                  # away from the edges
            m[[0, -1]], m[:, [0, -1]], m[..., [0, -1]] = False, False, False
        assert np.array_equal(anatomy.holes(m), ndi.binary_fill_holes(m) & ~m), t
        in_slices = np.stack([ndi.binary_fill_holes(m[..., z]) & ~m[..., z]
                              for z in range(shape[2])], -1)
        assert np.array_equal(anatomy.holes(m, in_slices=True), in_slices), t
        labels, n = ndi.label(m, ndi.generate_binary_structure(3, 3))
        sizes = np.bincount(labels.ravel())[1:]
        want = labels == 1 + np.argmax(sizes) if n else np.zeros(shape, bool)
        got = anatomy.largest_components(m)
        assert got.sum() == want.sum() and (n == 0 or np.unique(labels[got]).size == 1), t
    assert anatomy.bounding_box(np.zeros((3, 4, 5), bool)) == (slice(0, 0),) * 3
    box = np.zeros((6, 6, 6), bool)
    box[2, 1:3, 5] = True
    assert anatomy.bounding_box(box, margin=1) == (slice(1, 4), slice(0, 4), slice(4, 7))
