"""lungseg_utils.geometry, the model grid: there and back, any orientation, anisotropic
voxels, oblique affines, centring from the image, and real native scans."""

import itertools

import nibabel as nib
import numpy as np
import pytest

from lungseg_utils.config import native_data_dir
from lungseg_utils.errors import LungsegInputError
from lungseg_utils.geometry import (
    axial_axis,
    bbox_centre_mm,
    from_model_grid,
    is_model_sized,
    lps_affine,
    lung_centre_mm,
    make_model_grid,
    mask_to_model_grid,
    model_affine,
    round_trip_mask,
    spacing_from_affine,
    to_model_grid,
)
from lungseg_utils.dataio import load_case
from lungseg_utils.scan.dicom import LPS_TO_RAS
from lungseg_utils.study.robustness import reorient
from lungseg_utils.synthetic import make_phantom


def _dice(a, b):
    a, b = a > 0, b > 0
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def all_axcodes():
    """The 48 axis orientations: 6 permutations x 8 sign combinations."""
    pairs = [("L", "R"), ("P", "A"), ("S", "I")]
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((0, 1), repeat=3):
            yield "".join(pairs[p][s] for p, s in zip(perm, signs))


def test_model_affine_is_lps_and_centred():
    aff = model_affine([10.0, -20.0, 30.0])
    assert nib.aff2axcodes(aff) == ("L", "P", "S")
    np.testing.assert_allclose(aff @ [31.5, 31.5, 31.5, 1], [10, -20, 30, 1])
    np.testing.assert_allclose(np.abs(np.diag(aff)[:3]), 5.0)


def test_lps_affine_spacing_and_centre():
    aff = lps_affine((10, 20, 5), (0.5, 2.0, 3.0), centre_mm=(7.0, -8.0, 9.0))
    assert nib.aff2axcodes(aff) == ("L", "P", "S")
    np.testing.assert_allclose(aff[:3, :3], np.diag([-0.5, -2.0, 3.0]))
    np.testing.assert_allclose(aff @ [4.5, 9.5, 2.0, 1], [7.0, -8.0, 9.0, 1])   # the centre
    np.testing.assert_allclose(lps_affine((4, 4, 4), 2.0)[:3, :3], np.diag([-2.0, -2.0, 2.0]))
    np.testing.assert_allclose(lps_affine((4, 4, 4), 2.0) @ [1.5, 1.5, 1.5, 1], [0, 0, 0, 1])


@pytest.fixture(scope="module")
def course_phantom():
    return make_phantom(seed=3)


@pytest.mark.parametrize("codes", list(all_axcodes()))
def test_course_grid_passes_through_in_every_orientation(course_phantom, codes):
    ct, mask, affine = course_phantom
    ct_o, aff_o = reorient(ct, affine, codes)
    mask_o, _ = reorient(mask, affine, codes)
    assert "".join(nib.aff2axcodes(aff_o)) == codes
    ct64, grid = to_model_grid(ct_o, aff_o)
    assert grid.passthrough
    # the model sees the same L, P, S array whatever the file's orientation
    np.testing.assert_array_equal(ct64, ct)
    np.testing.assert_allclose(grid.affine, affine, atol=1e-9)
    back = from_model_grid(mask_to_model_grid(mask_o, grid), grid)
    assert back.shape == mask_o.shape
    np.testing.assert_array_equal(back >= 0.5, mask_o > 0)


@pytest.fixture(scope="module")
def aniso_phantom():
    """A scan on its own grid (2.5 x 2.5 x 4 mm, L, P, S) and its model-grid image."""
    ct, mask, affine = make_phantom(shape=(150, 140, 90), spacing_mm=(2.5, 2.5, 4.0), seed=5,
                                    affine=lps_affine((150, 140, 90), (2.5, 2.5, 4.0), (3, -8, 12)))
    return ct, mask, affine, to_model_grid(ct, affine)[0]


@pytest.mark.parametrize("codes", ["LPS", "RAS", "SAR", "IPL", "AIR", "PLI"])
def test_anisotropic_scan_in_unusual_orientations(aniso_phantom, codes):
    """A scan on its own grid goes to 64^3 and back onto its own grid, in any axis order."""
    ct, mask, affine, ref64 = aniso_phantom
    ct_o, aff_o = reorient(ct, affine, codes)
    mask_o, _ = reorient(mask, affine, codes)
    ct64, grid = to_model_grid(ct_o, aff_o)
    assert ct64.shape == (64, 64, 64) and ct64.dtype == np.float32 and not grid.passthrough
    prob64 = mask_to_model_grid(mask_o, grid)
    # the phantom's lungs are centred on the world origin (z jitter aside): the cube finds them
    assert np.all(np.abs(grid.centre_mm[:2]) < 10.0)
    back = from_model_grid(prob64, grid)
    assert back.shape == mask_o.shape
    assert _dice(back >= 0.5, mask_o) > 0.98
    # the model-grid image is the same anatomy whatever the input's orientation
    assert np.abs(ct64 - ref64).mean() < 1.0


def test_oblique_affine_round_trip():
    affine = lps_affine((120, 120, 80), (3, 3, 4))
    theta = np.deg2rad(12)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    # a grid rotated by 12 degrees about the head-foot axis
    ct, mask, aff = make_phantom(shape=(120, 120, 80), seed=2, affine=rot @ affine)
    _, grid = to_model_grid(ct, aff)
    back = from_model_grid(mask_to_model_grid(mask, grid), grid)
    assert _dice(back >= 0.5, mask) > 0.97


def test_is_model_sized():
    assert is_model_sized((64, 64, 64), model_affine([0, 0, 0]))
    assert is_model_sized((64, 64, 64), np.diag([5.0, 5, 5, 1]))       # R, A, S: still the grid
    assert not is_model_sized((64, 64, 63), model_affine([0, 0, 0]))
    assert not is_model_sized((64, 64, 64), np.diag([4.0, 5, 5, 1]))
    oblique = model_affine([0, 0, 0])
    t = np.deg2rad(20)
    oblique[:3, :3] = oblique[:3, :3] @ [[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0],
                                         [0, 0, 1]]
    assert not is_model_sized((64, 64, 64), oblique)


def test_explicit_centre_places_the_cube():
    ct, _, affine = make_phantom(shape=(64, 64, 64), seed=1)      # course-sized: would pass through
    grid = make_model_grid(ct, affine, centre_mm=(20.0, -10.0, 5.0))
    assert not grid.passthrough
    np.testing.assert_allclose(grid.centre_mm, (20.0, -10.0, 5.0))
    ct64, _ = to_model_grid(ct, affine, centre_mm=(20.0, -10.0, 5.0))
    # L, P, S: +20 mm in x is 4 voxels down axis 0, -10 mm in y 2 up axis 1, +5 mm in z 1 up
    np.testing.assert_allclose(ct64[4:, :-2, :-1], ct[:-4, 2:, 1:], atol=1e-3)
    assert (ct64[:4] == -1000.0).all()                           # beyond the scan: air


def test_bad_shapes_raise():
    ct, mask, affine = make_phantom(shape=(40, 40, 30), spacing_mm=(8, 8, 10))
    _, grid = to_model_grid(ct, affine)
    with pytest.raises(LungsegInputError, match="mask shape"):
        mask_to_model_grid(mask[:-1], grid)
    with pytest.raises(LungsegInputError, match="expected a"):
        from_model_grid(np.zeros((32, 32, 32)), grid)
    with pytest.raises(LungsegInputError, match="3D"):
        to_model_grid(ct[..., 0], affine[:3, :3])


def test_lung_centre_ignores_the_label_and_finds_the_lungs():
    shape, sp = (160, 160, 100), (2.0, 2.0, 3.0)
    ct, mask, affine = make_phantom(shape=shape, spacing_mm=sp, seed=4,
                                    affine=lps_affine(shape, sp, (20.0, 30.0, -15.0)))
    idx = np.argwhere(mask)
    true_centre = (affine @ np.r_[(idx.min(0) + idx.max(0)) / 2, 1])[:3]
    est = lung_centre_mm(ct, affine)
    assert np.all(np.abs(est - true_centre) < 8.0), (est, true_centre)


NATIVE = native_data_dir()


@pytest.mark.skipif(NATIVE is None, reason="../shared/data/lctsc_native not present")
@pytest.mark.parametrize("case_id", sorted(p.name for p in NATIVE.iterdir()) if NATIVE else [])
def test_native_round_trip_keeps_dice_and_volume(case_id):
    """The resolution ceiling on real scans: Dice >= 0.98, volume within 1.5 %."""
    case = load_case(NATIVE / case_id)
    back = round_trip_mask(case.mask, case.affine, ct_hu=case.ct_hu)
    assert back.shape == case.mask.shape
    assert _dice(back, case.mask) >= 0.98
    assert abs(back.sum() / case.mask.sum() - 1.0) <= 0.015
    # and the image-based centring lands within two model voxels of the label's centre
    grid = make_model_grid(case.ct_hu, case.affine)
    idx = np.argwhere(case.mask)
    label_centre = (case.affine @ np.r_[(idx.min(0) + idx.max(0)) / 2, 1])[:3]
    assert np.all(np.abs(grid.centre_mm - label_centre) <= 10.0)


#: A spread of the 48 axis orders: the stored one's mirror images and permutations.
SOME_ORDERS = ("RAS", "LPI", "SLA", "IRP", "ASR", "PIL")


NATIVE_CASES = sorted(p.name for p in NATIVE.iterdir()) if NATIVE else []


@pytest.mark.slow
@pytest.mark.skipif(NATIVE is None, reason="../shared/data/lctsc_native not present")
@pytest.mark.parametrize("case_id", NATIVE_CASES)
def test_the_cube_lands_on_the_same_anatomy_however_the_scan_is_stored(case_id):
    """Equivariant placement: the same scan in other axis orders, or resampled to finer
    in-plane voxels, gives the same centre within 2 mm (before, one scan's cube moved 3 cm
    toward the bowel in half of the 48 orders). Each scan is stored in one of the six orders
    (every order on one or two scans), and every fourth scan resampled finer."""
    from scipy import ndimage as ndi

    case = load_case(NATIVE / case_id)
    ref = lung_centre_mm(case.ct_hu, case.affine)
    i = NATIVE_CASES.index(case_id)
    codes = SOME_ORDERS[i % len(SOME_ORDERS)]
    ct, aff = reorient(case.ct_hu, case.affine, codes)
    assert np.linalg.norm(lung_centre_mm(ct, aff) - ref) <= 2.0, codes
    if i % 4:
        return
    fine = ndi.zoom(case.ct_hu, (2, 2, 1), order=1)        # half the in-plane voxel size
    aff = case.affine.copy()
    aff[:3, :2] /= 2
    aff[:3, 3] -= 0.25 * (case.affine[:3, 0] + case.affine[:3, 1])
    assert np.linalg.norm(lung_centre_mm(fine, aff) - ref) <= 2.0


# ----------------------------------------------------------------------------- affine helpers
def test_spacing_from_rotated_affine():
    theta = 0.3
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([0.8, 0.9, 2.5])
    assert spacing_from_affine(aff) == pytest.approx((0.8, 0.9, 2.5))


@pytest.mark.parametrize("codes,axis", [("LPS", 2), ("RAS", 2), ("SAR", 0), ("PIL", 1)])
def test_axial_axis_follows_the_header(codes, axis):
    vol = np.zeros((6, 7, 8), np.float32)
    _, aff = reorient(vol, lps_affine(vol.shape, (1.0, 1.5, 2.5)), codes)
    assert axial_axis(aff) == axis
    theta = np.deg2rad(15)                                   # a tilted gantry: still axis 2
    tilt = np.eye(4)
    tilt[1:3, 1:3] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    assert axial_axis(tilt @ lps_affine(vol.shape, 1.0)) == 2


def test_bbox_centre_and_lps_to_ras():
    mask = np.zeros((10, 12, 8), bool)
    mask[2:5, 3:10, 1:2] = True
    affine = lps_affine(mask.shape, (1.0, 2.0, 3.0), centre_mm=(5.0, -4.0, 7.0))
    idx = np.argwhere(mask)
    expected = (affine @ np.r_[(idx.min(0) + idx.max(0)) / 2, 1])[:3]
    np.testing.assert_allclose(bbox_centre_mm(mask, affine), expected)
    with pytest.raises(LungsegInputError, match="empty"):
        bbox_centre_mm(np.zeros((3, 3, 3)), affine)
    np.testing.assert_array_equal(LPS_TO_RAS @ LPS_TO_RAS, np.eye(4))     # its own inverse
    np.testing.assert_array_equal(LPS_TO_RAS @ [1.0, 2.0, 3.0, 1.0], [-1.0, -2.0, 3.0, 1.0])


def test_a_voxel_s_volume_is_the_affine_s_determinant_on_a_sheared_grid_too():
    """Issue #27: a 15 degree gantry tilt kept in the affine shears the grid; the volume of a
    voxel is |det|, not the product of the column lengths (3.5 % too big at 15 degrees)."""
    from lungseg_utils.dataio import Case
    from lungseg_utils.geometry import spacing_from_affine, voxel_volume_ml

    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    assert voxel_volume_ml(affine) == pytest.approx(0.8 * 0.8 * 2.5 / 1000)
    sheared = affine.copy()
    sheared[1, 2] = 2.5 * np.tan(np.deg2rad(15))          # y moves with z: a tilted gantry
    assert np.prod(spacing_from_affine(sheared)) / 1000 > 1.03 * voxel_volume_ml(sheared)
    assert voxel_volume_ml(sheared) == pytest.approx(voxel_volume_ml(affine))
    case = Case("c", np.zeros((2, 2, 2), np.float32), np.ones((2, 2, 2), np.uint8), sheared,
                spacing_from_affine(sheared), None)
    assert case.lung_volume_ml == pytest.approx(8 * voxel_volume_ml(affine))


def _resample_everywhere(volume, src_affine, dst_affine, dst_shape, order, cval, smooth):
    """``geometry.resample`` as it was before it skipped work: every input voxel read (and
    smoothed), every output voxel computed."""
    from scipy import ndimage as ndi

    matrix = np.linalg.inv(src_affine) @ dst_affine
    rot, offset = (np.round(a) if np.allclose(a, np.round(a), atol=1e-6) else a
                   for a in (matrix[:3, :3], matrix[:3, 3]))
    vol = np.asarray(volume, np.float32)
    sigma = np.maximum(0.0, (np.abs(rot).sum(axis=1) - 1.0) / 2.0)
    if smooth and np.any(sigma > 0.05):
        vol = ndi.gaussian_filter(vol, sigma=sigma, mode="nearest")
    return ndi.affine_transform(vol, rot, offset=offset, output_shape=tuple(dst_shape),
                                order=order, mode="constant", cval=cval, prefilter=False)


def test_resample_skips_only_work_whose_result_it_knows():
    """Reading only the input the output grid reaches, and computing only the output that
    values other than ``cval`` reach, changes no voxel: random grids (oblique ones too), a
    volume of noise and one that is mostly ``cval``, both orders, with and without smoothing."""
    from scipy.spatial.transform import Rotation

    from lungseg_utils.geometry import resample

    rng = np.random.default_rng(7)
    for trial in range(24):
        shape, dst_shape = tuple(rng.integers(12, 40, 3)), tuple(rng.integers(12, 50, 3))
        src = np.diag([*rng.uniform(0.7, 6.0, 3), 1.0])
        if trial % 3 == 0:
            src[:3, :3] = Rotation.from_euler("xyz", rng.uniform(-0.4, 0.4, 3)).as_matrix() @ src[:3, :3]
        dst = np.diag([*(rng.uniform(0.7, 6.0, 3) if trial % 4 else [0.9, 1.0, 1.1]), 1.0])
        # the grids overlap, one centre shifted by up to a quarter of the other grid's size
        centre = src[:3, :3] @ ((np.array(shape) - 1) / 2 * rng.uniform(0.5, 1.5, 3))
        dst[:3, 3] = centre - dst[:3, :3] @ ((np.array(dst_shape) - 1) / 2)
        vol = rng.normal(size=shape).astype(np.float32)
        if trial % 2:
            vol[:] = 0.0
            vol[tuple(slice(int(rng.integers(0, n // 2)), int(rng.integers(n // 2 + 1, n)))
                      for n in shape)] = 1.0
        for order, cval, smooth in itertools.product((0, 1), (0.0, -1000.0), (False, True)):
            got = resample(vol, src, dst, dst_shape, order, cval, smooth)
            want = _resample_everywhere(vol, src, dst, dst_shape, order, cval, smooth)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * max(1.0, abs(cval)))
    # a coarse grid inside a fine one (CT to the model grid): the smoothing reads around it
    vol = rng.normal(size=(60, 60, 60)).astype(np.float32)
    dst = np.diag([3.0, 3.0, 3.0, 1.0])
    dst[:3, 3] = 15.0
    np.testing.assert_allclose(resample(vol, np.eye(4), dst, (10, 10, 10), smooth=True),
                               _resample_everywhere(vol, np.eye(4), dst, (10, 10, 10), 1, 0.0,
                                                    True), rtol=0, atol=1e-6)
