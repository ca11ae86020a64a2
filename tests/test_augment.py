"""Augmentation keeps CT and mask aligned, the mask binary, and is reproducible."""

import numpy as np
import pytest

from lungseg_utils import augment
from lungseg_utils.errors import LungsegInputError

THRESHOLD = 0.3


def _phantom(seed=0):
    """A CT whose mask is exactly ``ct > THRESHOLD``: two blobs, no voxel near the threshold."""
    rng = np.random.default_rng(seed)
    i, j, k = np.indices((64, 64, 64), dtype=np.float32)
    blob = (((i - 24) / 14) ** 2 + ((j - 30) / 18) ** 2 + ((k - 33) / 22) ** 2 <= 1) | (
        ((i - 44) / 10) ** 2 + ((j - 36) / 16) ** 2 + ((k - 28) / 18) ** 2 <= 1)
    ct = np.where(blob, 0.6 + 0.2 * rng.random(blob.shape), 0.1 * rng.random(blob.shape))
    return ct.astype(np.float32), blob.astype(np.uint8)


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
    ct, mask = _phantom()
    rng = np.random.default_rng(seed)
    for transform in (lambda c, m: augment.random_flip(c, m, rng, p=0.7),
                      lambda c, m: augment.random_rot90(c, m, rng, p=1.0),
                      lambda c, m: augment.random_shift(c, m, rng, max_shift_vox=4)):
        out_ct, out_mask = transform(ct, mask)
        _check_aligned(out_ct, out_mask)
        assert out_mask.dtype == np.uint8


def test_rot90_and_shift_change_the_volume():
    ct, mask = _phantom()
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
    ct, mask = _phantom()
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
    ct, _ = _phantom()
    out = augment.intensity_jitter(ct, np.random.default_rng(6), p=1.0, sigma=0.05)
    assert out.dtype == np.float32 and out.shape == ct.shape
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert np.std(out - ct) == pytest.approx(0.05, rel=0.2)
    assert np.array_equal(augment.intensity_jitter(ct, np.random.default_rng(6), p=0.0), ct)


@pytest.mark.parametrize("seed", range(4))
def test_augment_pair_without_jitter_keeps_alignment(seed):
    ct, mask = _phantom()
    settings = dict(p_jitter=0.0, p_elastic=0.0, p_flip=0.5, p_rot90=1.0, p_shift=1.0)
    out_ct, out_mask = augment.augment_pair(ct[..., None], mask[..., None],
                                            np.random.default_rng(seed), settings)
    assert out_ct.shape == (64, 64, 64, 1)
    _check_aligned(out_ct[..., 0], out_mask[..., 0])


def test_augment_pair_with_everything():
    ct, mask = _phantom()
    settings = dict(p_jitter=1.0, p_elastic=1.0, p_flip=0.5, p_rot90=1.0, p_shift=1.0)
    out_ct, out_mask = augment.augment_pair(ct, mask, np.random.default_rng(7), settings)
    assert set(np.unique(out_mask)) <= {0, 1}
    assert _dice(out_mask, out_ct > THRESHOLD) > 0.95


def test_mismatched_shapes_raise():
    with pytest.raises(LungsegInputError, match="same 3D shape"):
        augment.random_flip(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), np.random.default_rng())


def _arrays(n=3):
    pairs = [_phantom(seed) for seed in range(n)]
    x = np.stack([p[0] for p in pairs])[..., None]
    y = np.stack([p[1] for p in pairs])[..., None].astype(np.float32)
    return x, y


def test_dataset_batches_reproducible_and_aligned():
    x, y = _arrays()
    settings = dict(p_jitter=0.0, p_elastic=0.0, p_rot90=1.0, p_shift=1.0)
    a = augment.LungDataset((x, y), batch_size=2, settings=settings, seed=3, samples_per_epoch=5)
    b = augment.LungDataset((x, y), batch_size=2, settings=settings, seed=3, samples_per_epoch=5)
    assert len(a) == 3
    for i in reversed(range(len(a))):  # order of requests does not matter
        xa, ya = a[i]
        xb, yb = b[i]
        assert xa.dtype == ya.dtype == np.float32
        assert xa.shape == ya.shape == ((2 if i < 2 else 1), 64, 64, 64, 1)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        for xs, ys in zip(xa, ya):
            _check_aligned(xs[..., 0], ys[..., 0])


def test_dataset_epochs_differ_and_seed_matters():
    x, y = _arrays()
    ds = augment.LungDataset((x, y), batch_size=3, seed=3)
    first = ds[0][0]
    np.testing.assert_array_equal(ds[0][0], first)  # same epoch, same batch
    ds.on_epoch_end()
    assert ds.epoch == 1
    assert not np.array_equal(ds[0][0], first)
    other = augment.LungDataset((x, y), batch_size=3, seed=4)
    assert not np.array_equal(other[0][0], first)


def test_dataset_every_case_once_per_epoch():
    x, y = _arrays(4)
    ds = augment.LungDataset((x, y), batch_size=2, seed=0)
    for epoch in range(3):
        ds.epoch = epoch
        assert sorted(ds.order()) == [0, 1, 2, 3]


def test_validation_dataset_is_unchanged():
    x, y = _arrays()
    ds = augment.LungDataset((x, y), batch_size=2, augment=False)
    np.testing.assert_array_equal(ds[0][0], x[:2])
    np.testing.assert_array_equal(ds[1][1], y[2:])
    with pytest.raises(IndexError):
        ds[2]


def test_dataset_loads_case_folders(tmp_path):
    from lungseg_utils.synthetic import write_demo_dataset

    folder = write_demo_dataset(tmp_path, n_cases=2)
    cases = sorted(p for p in folder.iterdir() if p.is_dir())
    ds = augment.LungDataset(cases, batch_size=2, augment=False)
    xb, yb = ds[0]
    assert xb.shape == yb.shape == (2, 64, 64, 64, 1)
    assert 0.0 <= xb.min() and xb.max() <= 1.0
    assert set(np.unique(yb)) == {0.0, 1.0}


def test_dataset_with_worker_threads_in_fit():
    keras = augment.keras
    x, y = _arrays(4)
    ds = augment.LungDataset((x, y), batch_size=2, seed=0, workers=2, use_multiprocessing=False)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append((epoch, ds.epoch))

    inp = keras.Input((64, 64, 64, 1))
    m = keras.Model(inp, keras.layers.Conv3D(1, 1, activation="sigmoid")(inp))
    m.compile("sgd", "mse")
    m.fit(ds, epochs=2, verbose=0, shuffle=False,
          callbacks=[augment.EpochSetter(ds), Record()])
    assert seen == [(0, 0), (1, 1)]
