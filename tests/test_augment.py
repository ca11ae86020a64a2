"""lungseg_utils.augment (pure NumPy): every transform keeps CT and mask aligned and the mask
binary, is reproducible from its generator, and the defaults come from config."""

import numpy as np
import pytest

from lungseg_utils import augment, config
from lungseg_utils.errors import LungsegInputError
from _shared import THRESHOLD, blob_phantom

def _dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def _check_aligned(ct, mask, shape=(64, 64, 64)):
    assert ct.shape == shape and mask.shape == shape
    assert ct.dtype == np.float32
    assert set(np.unique(mask)) <= {0, 1}
    np.testing.assert_array_equal(mask, (ct > THRESHOLD).astype(mask.dtype))


@pytest.mark.parametrize("seed", range(6))
def test_rigid_transforms_keep_ct_and_mask_aligned(seed):
    ct, mask = blob_phantom()
    rng = np.random.default_rng(seed)
    for transform in (lambda c, m: augment.random_flip(c, m, rng, p=0.7),
                      lambda c, m: augment.random_rot90(c, m, rng, p=1.0),
                      lambda c, m: augment.random_shift(c, m, rng, max_shift_vox=4)):
        out_ct, out_mask = transform(ct, mask)
        _check_aligned(out_ct, out_mask)
        assert out_mask.dtype == np.uint8


def test_rot90_and_shift_change_the_volume():
    ct, mask = blob_phantom()
    rng = np.random.default_rng(0)
    assert not np.array_equal(augment.random_rot90(ct, mask, rng, p=1.0)[1], mask)
    shifted_ct, shifted = augment.random_shift(ct, mask, np.random.default_rng(1), 4)
    assert not np.array_equal(shifted, mask)
    assert shifted.sum() <= mask.sum()  # only air comes in


def test_shift_pads_with_air():
    ct, mask = np.ones((8, 8, 8), np.float32), np.ones((8, 8, 8), np.uint8)
    out_ct, out_mask = augment.random_shift(ct, mask, np.random.default_rng(3), max_shift_vox=2)
    assert out_ct.min() == 0.0 and out_mask.min() == 0  # some border became air
    np.testing.assert_array_equal(out_mask, out_ct.astype(np.uint8))


def test_elastic_keeps_alignment_approximately():
    ct, mask = blob_phantom()
    rng = np.random.default_rng(4)
    out_ct, out_mask = augment.elastic_deform(ct, mask, rng, sigma_mm=5.0, smooth_mm=30.0)
    assert out_ct.shape == ct.shape and out_mask.dtype == mask.dtype
    assert set(np.unique(out_mask)) <= {0, 1}
    assert _dice(out_mask, out_ct > THRESHOLD) > 0.95
    assert not np.array_equal(out_mask, mask)  # it did move something
    assert _dice(out_mask, mask) > 0.9  # but mildly


def test_elastic_field_scale():
    field = augment.elastic_field((32, 32, 32), np.random.default_rng(5), sigma_mm=3.0,
                                  smooth_mm=40.0, spacing_mm=5.0)
    assert field.shape == (3, 32, 32, 32) and field.dtype == np.float32
    assert np.sqrt((field ** 2).sum(axis=0)).max() == pytest.approx(3.0 / 5.0, rel=1e-4)


def test_jitter_changes_only_intensity_and_stays_in_range():
    ct, _ = blob_phantom()
    out = augment.intensity_jitter(ct, np.random.default_rng(6), p=1.0, sigma=0.05)
    assert out.dtype == np.float32 and out.shape == ct.shape
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert np.std(out - ct) == pytest.approx(0.05, rel=0.2)
    assert np.array_equal(augment.intensity_jitter(ct, np.random.default_rng(6), p=0.0), ct)


@pytest.mark.parametrize("seed", range(4))
def test_augment_pair_without_jitter_keeps_alignment(seed):
    ct, mask = blob_phantom()
    settings = dict(p_jitter=0.0, p_elastic=0.0, p_flip=0.5, p_rot90=1.0, p_shift=1.0)
    out_ct, out_mask = augment.augment_pair(ct[..., None], mask[..., None],
                                            np.random.default_rng(seed), settings)
    assert out_ct.shape == (64, 64, 64, 1)
    _check_aligned(out_ct[..., 0], out_mask[..., 0])


def test_augment_pair_with_everything():
    ct, mask = blob_phantom()
    settings = dict(p_jitter=1.0, p_elastic=1.0, p_flip=0.5, p_rot90=1.0, p_shift=1.0)
    out_ct, out_mask = augment.augment_pair(ct, mask, np.random.default_rng(7), settings)
    assert set(np.unique(out_mask)) <= {0, 1}
    assert _dice(out_mask, out_ct > THRESHOLD) > 0.95


def test_mismatched_shapes_raise():
    with pytest.raises(LungsegInputError, match="same 3D shape"):
        augment.random_flip(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), np.random.default_rng())


def test_flip_and_rot90_exact():
    ct, mask = blob_phantom()
    rng = np.random.default_rng(0)
    out_ct, out_mask = augment.random_flip(ct, mask, rng, p=1.0)
    np.testing.assert_array_equal(out_ct, np.flip(ct, (0, 1, 2)))
    np.testing.assert_array_equal(out_mask, np.flip(mask, (0, 1, 2)))
    same = augment.random_flip(ct, mask, rng, p=0.0)
    np.testing.assert_array_equal(same[0], ct)
    # a non-cubic volume turns only in its square plane; with none, not at all
    box = np.arange(4 * 4 * 6, dtype=np.float32).reshape(4, 4, 6)
    turned, _ = augment.random_rot90(box, box > 40, np.random.default_rng(1), p=1.0)
    assert turned.shape == box.shape and not np.array_equal(turned, box)
    assert any(np.array_equal(turned, np.rot90(box, k, (0, 1))) for k in (1, 2, 3))
    odd = np.random.default_rng(3).random((3, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(augment.random_rot90(odd, odd > 0.5, np.random.default_rng(2),
                                                       p=1.0)[0], odd)


def test_augment_pair_defaults_come_from_config():
    ct, mask = blob_phantom()
    assert {"p_flip", "p_rot90", "p_jitter", "jitter_sigma", "p_shift", "max_shift_vox",
            "p_elastic", "elastic_sigma_mm", "elastic_smooth_mm"} <= set(augment.AUGMENT_DEFAULTS)
    assert not {"flip_axes", "spacing_mm"} & set(augment.AUGMENT_DEFAULTS)
    assert all(augment.AUGMENT_DEFAULTS[k] == config.get_profile("quick")[k]
               for k in augment.AUGMENT_DEFAULTS)
    runs = [augment.augment_pair(ct, mask, np.random.default_rng(11), s)
            for s in (None, augment.AUGMENT_DEFAULTS, config.get_profile("quick"))]
    for out_ct, out_mask in runs[1:]:                   # a whole profile: extra keys ignored
        np.testing.assert_array_equal(out_ct, runs[0][0])
        np.testing.assert_array_equal(out_mask, runs[0][1])
    off = {k: 0.0 for k in augment.AUGMENT_DEFAULTS if k.startswith("p_")}
    out_ct, out_mask = augment.augment_pair(ct, mask, np.random.default_rng(11), off)
    np.testing.assert_array_equal(out_ct, ct)           # every probability 0: unchanged
    np.testing.assert_array_equal(out_mask, mask)
    changed = augment.augment_pair(ct, mask, np.random.default_rng(11), dict(off, p_flip=1.0))
    np.testing.assert_array_equal(changed[0], np.flip(ct, (0, 1, 2)))


def test_affine_keeps_alignment_and_z_crop_frames_the_lungs():
    ct, mask = blob_phantom()
    out_ct, out_mask = augment.random_affine(ct, mask, np.random.default_rng(8), 10.0, 0.1)
    assert out_ct.shape == ct.shape and out_mask.dtype == mask.dtype
    assert set(np.unique(out_mask)) <= {0, 1} and not np.array_equal(out_mask, mask)
    assert _dice(out_mask, out_ct > THRESHOLD) > 0.95
    cropped_ct, cropped = augment.random_z_crop(ct, mask, np.random.default_rng(9), 2)
    np.testing.assert_array_equal(cropped, mask)            # the lungs are all kept
    zs = np.flatnonzero(mask.any(axis=(0, 1)))
    air = ~cropped_ct.any(axis=(0, 1))
    assert air[: zs[0] - 2].all() and air[zs[-1] + 3:].all()  # beyond the margin: air
    assert cropped_ct[:, :, zs[0]:zs[-1] + 1].any()


def test_intensity_and_blur_change_only_the_ct_within_range():
    ct, _ = blob_phantom()
    rng = np.random.default_rng(10)
    for out in (augment.random_intensity(ct, rng), augment.random_blur(ct, rng, 1.0, 3)):
        assert out.dtype == np.float32 and out.shape == ct.shape
        assert 0.0 <= out.min() and out.max() <= 1.0 and not np.array_equal(out, ct)
        assert np.corrcoef(out.ravel(), ct.ravel())[0, 1] > 0.9   # the same anatomy


#: augment_pair's outputs recorded before its steps became the registry ``augment.PIPELINE``:
#: (sha256 of the mask, CT sum, CT sum weighted by (voxel index mod 97), the generator's next
#: ``integers(2**30)``), for seeds 0-3 under the defaults, the main profile and every
#: probability 1. The mask must match exactly and the generator must stand at the same place
#: (the same random-number stream); the CT's sums allow for last-bit differences of
#: interpolation and ``x ** g`` between CPUs.
RECORDED = {
    ("defaults", 0): ("1e29c56a67e507ca", 33741.575, 1618942.6, 17746413),
    ("defaults", 1): ("9234ed89354debf3", 36183.271, 1737786.4, 183097791),
    ("defaults", 2): ("10a5f168f350c861", 34150.571, 1638069.9, 456549622),
    ("defaults", 3): ("e788fde6ab3ab43b", 34472.123, 1656371.9, 751931440),
    ("main", 0): ("eee2d7e833a2a920", 30523.033, 1464362.9, 678626743),
    ("main", 1): ("24852f3aee02f84f", 33197.476, 1592699.5, 809078539),
    ("main", 2): ("9d5be3980bd4080a", 35467.754, 1703660.4, 443978711),
    ("main", 3): ("047267f2271140e1", 26989.747, 1294960.8, 922336487),
    ("all_on", 0): ("733998b3d2615b14", 41006.159, 1968509.5, 553867300),
    ("all_on", 1): ("7e3df3cd918c5e7a", 42030.916, 2016420.2, 380023796),
    ("all_on", 2): ("aeb07b575fa4973b", 55258.690, 2652753.2, 360633478),
    ("all_on", 3): ("133bca0e3d017e6b", 34740.938, 1669121.5, 490527139),
}


@pytest.mark.parametrize("name, seed", sorted(RECORDED))
def test_augment_pair_gives_the_recorded_samples(name, seed):
    import hashlib

    settings = {"defaults": None, "main": config.get_profile("main"),
                "all_on": {k: 1.0 for k in augment.AUGMENT_DEFAULTS if k.startswith("p_")}}[name]
    ct, mask = blob_phantom()
    rng = np.random.default_rng(seed)
    out_ct, out_mask = augment.augment_pair(ct, mask, rng, settings)
    weights = (np.arange(ct.size, dtype=np.float64) % 97).reshape(ct.shape)
    mask_sha, ct_sum, ct_weighted, next_draw = RECORDED[name, seed]
    assert hashlib.sha256(out_mask.tobytes()).hexdigest()[:16] == mask_sha
    assert float(out_ct.sum(dtype=np.float64)) == pytest.approx(ct_sum, rel=1e-6)
    assert float((out_ct * weights).sum()) == pytest.approx(ct_weighted, rel=1e-6)
    assert int(rng.integers(1 << 30)) == next_draw


def test_pipeline_is_the_one_list_of_steps_and_names_every_setting():
    """augment.PIPELINE names every augmentation setting of config (and nothing else); each
    step at probability 0 changes nothing, at 1 changes its input; the mask moves only under
    the steps that are not CT-only."""
    named = {key for step in augment.PIPELINE for key in (step.p, *step.keys)}
    assert named == set(augment.AUGMENT_DEFAULTS)
    assert len({step.name for step in augment.PIPELINE}) == len(augment.PIPELINE)
    ct, mask = blob_phantom()
    s = config.get_profile("main")
    for step in augment.PIPELINE:
        args = [s[key] for key in step.keys]
        for p in (0.0, 1.0):
            rng = np.random.default_rng(3)
            out = (step.transform(ct, rng, *args, p=p) if step.ct_only
                   else step.transform(ct, mask, rng, *args, p=p))
            out_ct = out if step.ct_only else out[0]
            assert out_ct.dtype == np.float32 and out_ct.shape == ct.shape, step.name
            assert np.array_equal(out_ct, ct) == (p == 0.0), (step.name, p)
    rows = augment.pipeline_rows(s)
    assert [r["step"] for r in rows] == [step.name for step in augment.PIPELINE]
    assert rows[0]["probability"] == f"p_elastic={s['p_elastic']}"
    assert {r["applies to"] for r in rows} == {"CT", "CT and mask"}
