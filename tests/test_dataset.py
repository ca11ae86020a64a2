"""lungseg_utils.dataset: the Keras PyDataset that feeds training (reproducible, aligned,
a new augmentation each epoch, the epoch kept in step with fit) and the array loader."""

import numpy as np
import pytest

from lungseg_utils import dataset, dataio, preprocess
from lungseg_utils.dataset import LungDataset, load_training_arrays
from lungseg_utils.errors import LungsegInputError
from _shared import THRESHOLD, blob_phantom

keras = dataset.keras
def _arrays(n=3):
    pairs = [blob_phantom(seed) for seed in range(n)]
    x = np.stack([p[0] for p in pairs])[..., None]
    y = np.stack([p[1] for p in pairs])[..., None].astype(np.float32)
    return x, y


def _check_aligned(ct, mask):
    assert ct.shape == mask.shape == (64, 64, 64)
    assert set(np.unique(mask)) <= {0, 1}
    np.testing.assert_array_equal(mask, (ct > THRESHOLD).astype(mask.dtype))


def test_batches_reproducible_and_aligned():
    x, y = _arrays()
    settings = dict(p_jitter=0.0, p_elastic=0.0, p_rot90=1.0, p_shift=1.0)
    a = LungDataset((x, y), batch_size=2, settings=settings, seed=3, samples_per_epoch=5)
    b = LungDataset((x, y), batch_size=2, settings=settings, seed=3, samples_per_epoch=5)
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
    with pytest.raises(IndexError):
        a[3]


def test_epochs_differ_and_seed_matters():
    x, y = _arrays()
    ds = LungDataset((x, y), batch_size=3, seed=3)
    first = ds[0][0]
    np.testing.assert_array_equal(ds[0][0], first)  # same epoch, same batch
    ds.on_epoch_end()
    assert ds.epoch == 1
    assert not np.array_equal(ds[0][0], first)
    other = LungDataset((x, y), batch_size=3, seed=4)
    assert not np.array_equal(other[0][0], first)
    resumed = LungDataset((x, y), batch_size=3, seed=3, epoch=1)   # a resumed run's start
    np.testing.assert_array_equal(resumed[0][0], ds[0][0])


def test_every_case_once_per_epoch_and_repeats_beyond():
    x, y = _arrays(4)
    ds = LungDataset((x, y), batch_size=2, seed=0)
    orders = []
    for epoch in range(3):
        ds.epoch = epoch
        assert sorted(ds.order()) == [0, 1, 2, 3]
        orders.append(list(ds.order()))
    assert len({tuple(o) for o in orders}) > 1                   # reshuffled between epochs
    more = LungDataset((x, y), batch_size=2, seed=0, samples_per_epoch=10)
    assert len(more) == 5 and np.bincount(more.order(), minlength=4).min() >= 2
    fixed = LungDataset((x, y), batch_size=2, seed=0, shuffle=False, samples_per_epoch=6)
    assert list(fixed.order()) == [0, 1, 2, 3, 0, 1]


def test_validation_dataset_is_unchanged():
    x, y = _arrays()
    ds = LungDataset((x, y), batch_size=2, augment=False)
    np.testing.assert_array_equal(ds[0][0], x[:2])
    np.testing.assert_array_equal(ds[1][1], y[2:])
    with pytest.raises(IndexError):
        ds[2]


def test_bad_arguments_raise():
    x, y = _arrays(1)
    with pytest.raises(LungsegInputError, match="batch_size"):
        LungDataset((x, y), batch_size=0)
    with pytest.raises(LungsegInputError, match="equal shape"):
        LungDataset((x, y[..., :32, :]), batch_size=1)


def test_loads_case_folders(demo_data):
    cases = dataio.discover_cases(demo_data)[:2]
    ds = LungDataset(cases, batch_size=2, augment=False)
    xb, yb = ds[0]
    assert xb.shape == yb.shape == (2, 64, 64, 64, 1)
    assert 0.0 <= xb.min() and xb.max() <= 1.0
    assert set(np.unique(yb)) == {0.0, 1.0}
    case = dataio.load_case(cases[1])
    x, y = preprocess.preprocess_case(case.ct_hu, case.mask)
    np.testing.assert_array_equal(xb[1], x)
    np.testing.assert_array_equal(yb[1], y)


def test_load_training_arrays_needs_the_model_grid(demo_data, tmp_path):
    x, y = load_training_arrays(dataio.discover_cases(demo_data)[:1], hu_window=(-1000.0, 0.0))
    assert x.shape == y.shape == (1, 64, 64, 64, 1) and x.dtype == np.float32
    case = dataio.load_case(dataio.discover_cases(demo_data)[0])
    np.testing.assert_allclose(x[0, ..., 0], np.clip((case.ct_hu + 1000.0) / 1000.0, 0, 1))
    small = tmp_path / "small"
    dataio.save_nifti(case.ct_hu[:32], case.affine, small / dataio.CT_NAME)
    dataio.save_nifti(case.mask[:32], case.affine, small / dataio.MASK_NAME)
    with pytest.raises(LungsegInputError, match="model grid"):
        load_training_arrays([small])


def test_endless_stream_is_fixed_by_the_index_alone():
    x, y = _arrays(3)
    settings = dict(p_jitter=0.0, p_elastic=0.0, p_rot90=1.0, p_shift=1.0)
    per_epoch = LungDataset((x, y), batch_size=2, settings=settings, seed=5)
    stream = LungDataset((x, y), batch_size=2, settings=settings, seed=5, endless=True)
    assert stream.num_batches is None and per_epoch.num_batches == len(per_epoch) == 2
    for i in (3, 0, 5, 2):                                # any order: batch i % 2 of epoch i // 2
        per_epoch.epoch = i // 2
        np.testing.assert_array_equal(stream[i][0], per_epoch[i % 2][0])
        np.testing.assert_array_equal(stream[i][1], per_epoch[i % 2][1])
    stream.on_epoch_end()
    assert stream.epoch == 0                              # no counter to keep in step
    resumed = LungDataset((x, y), batch_size=2, settings=settings, seed=5, endless=True, epoch=1)
    np.testing.assert_array_equal(resumed[0][0], stream[2][0])


@pytest.mark.parametrize("problem, message", [
    ("copy", r"lung\.nii\.gz: mask values are not labels .*a copy of the CT"),
    ("empty", r"lung\.nii\.gz: the lung mask is empty"),
    ("bone", r"lung\.nii\.gz: only \d+ % of the mask lies below -500 HU"),
    ("fraction", r"lung\.nii\.gz: mask values are not labels"),
])
def test_training_cases_are_checked_before_a_run_in_one_line(tmp_path, problem, message):
    """Issue #27: a mask that is a copy of its CT, an empty one, one on the wrong tissue or a
    probability map is refused in one line naming the file, before any training."""
    from lungseg_utils import synthetic

    data = synthetic.write_demo_dataset(tmp_path / "data", n_cases=2)
    folders = dataio.discover_cases(data)
    assert dataset.check_training_cases(folders) == []            # the good cases pass
    case = dataio.load_case(folders[1])
    bad = {"copy": case.ct_hu.astype(np.int16), "empty": np.zeros_like(case.mask),
           "bone": (case.ct_hu > 0).astype(np.uint8), "fraction": case.mask * 0.7}[problem]
    dataio.save_nifti(bad, case.affine, folders[1] / dataio.MASK_NAME, overwrite=True)
    with pytest.raises(LungsegInputError, match=message):
        dataset.check_training_cases(folders)


def test_several_labels_are_merged_and_said_once(tmp_path):
    """Right and left lungs labelled 1 and 2: one lung mask, said once for all cases."""
    from lungseg_utils import synthetic

    data = synthetic.write_demo_dataset(tmp_path / "data", n_cases=2)
    folders = dataio.discover_cases(data)
    for folder in folders:
        case = dataio.load_case(folder)
        sides = case.mask * np.where(np.arange(64)[:, None, None] < 32, 1, 2)
        dataio.save_nifti(sides.astype(np.uint8), case.affine, folder / dataio.MASK_NAME,
                          overwrite=True)
    notes = dataset.check_training_cases(folders)
    assert len(notes) == 1 and "labels merged into one lung" in notes[0]
    assert all(f"{f.name} [1, 2]" in notes[0] for f in folders)
    assert dataio.load_case(folders[0]).mask.max() == 1
