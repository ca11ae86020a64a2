"""lungseg_utils.dataio: loading, validation of bad input, the one atomic writer, the split,
JSON, paths as stored and the data table."""

import gzip
import os
import stat
import warnings

import nibabel as nib
import numpy as np
import pytest

from _shared import dead_pid
from lungseg_utils.errors import LungsegInputError, LungsegWarning
from lungseg_utils.geometry import lps_affine
from lungseg_utils.dataio import (
    atomic_write,
    describe_case,
    discover_cases,
    file_sha256,
    format_table,
    load_case,
    load_cases,
    load_json,
    load_nifti,
    make_split,
    portable_path,
    save_json,
    save_nifti,
)
from lungseg_utils.scan.outputs import all_or_nothing, remove_stale_temps
from lungseg_utils.scan.reader import load_ct
from lungseg_utils.synthetic import make_phantom, write_demo_dataset


def _write(path, data, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) * [2, 2, 3, 1] if affine is None else affine), str(path))
    return path


@pytest.fixture
def case_dir(tmp_path):
    ct, mask, affine = make_phantom(shape=(24, 22, 20), spacing_mm=(12, 12, 14), seed=1)
    d = tmp_path / "patient_001"
    _write(d / "ct.nii.gz", ct.astype(np.int16), affine)
    _write(d / "lung.nii.gz", (mask * 3).astype(np.uint8), affine)  # labels > 0 count as lung
    return d


def test_load_case_types_and_binarisation(case_dir):
    case = load_case(case_dir)
    assert case.ct_hu.dtype == np.float32 and case.mask.dtype == np.uint8
    assert set(np.unique(case.mask)) <= {0, 1} and case.mask.any()
    assert case.spacing_mm == pytest.approx((12, 12, 14))
    assert case.axcodes == "LPS"
    assert case.lung_volume_ml == pytest.approx(case.mask.sum() * 12 * 12 * 14 / 1000)


def test_missing_files_name_the_file(case_dir, tmp_path):
    (case_dir / "lung.nii.gz").unlink()
    with pytest.raises(LungsegInputError, match=r"lung\.nii\.gz.*missing"):
        load_case(case_dir)
    with pytest.raises(LungsegInputError, match=r"ct\.nii\.gz.*missing"):
        load_case(_mk(tmp_path / "p2"))
    with pytest.raises(LungsegInputError, match="holds no ct.nii.gz"):
        load_ct(tmp_path / "p2")


def _mk(d):
    d.mkdir()
    return d


def test_discover_cases_errors(tmp_path, case_dir):
    assert discover_cases(tmp_path) == [case_dir]
    empty = _mk(tmp_path / "empty")
    with pytest.raises(LungsegInputError, match="no case folders"):
        discover_cases(empty)
    with pytest.raises(LungsegInputError, match="does not exist"):
        discover_cases(tmp_path / "absent")
    (case_dir / "lung.nii.gz").unlink()
    with pytest.raises(LungsegInputError, match="lung mask missing"):
        discover_cases(tmp_path)


def test_not_nifti_and_truncated(tmp_path, case_dir):
    bad = tmp_path / "bad" / "ct.nii.gz"
    bad.parent.mkdir()
    with gzip.open(bad, "wb") as f:
        f.write(b"this is not a nifti file at all" * 20)
    with pytest.raises(LungsegInputError, match=r"bad/ct\.nii\.gz.*not"):
        load_nifti(bad)
    plain = tmp_path / "plain.nii.gz"
    plain.write_text("hello")
    with pytest.raises(LungsegInputError, match="plain.nii.gz"):
        load_nifti(plain)
    data = (case_dir / "ct.nii.gz").read_bytes()
    trunc = tmp_path / "trunc.nii.gz"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(LungsegInputError, match=r"trunc\.nii\.gz.*(truncated|could not)"):
        load_nifti(trunc)


@pytest.mark.parametrize("shape,ok", [((8, 9), False), ((8, 9, 7, 2), False), ((8, 9, 7, 1), True)])
def test_dimensionality(tmp_path, shape, ok):
    p = _write(tmp_path / "img.nii.gz", np.zeros(shape, np.int16) - 1000)
    if ok:
        data, _, _ = load_nifti(p)
        assert data.shape == (8, 9, 7)
    else:
        with pytest.raises(LungsegInputError, match=r"img\.nii\.gz.*3D"):
            load_nifti(p)


def test_nan_and_inf(tmp_path):
    data = np.zeros((6, 6, 6), np.float32) - 1000
    data[1, 2, 3] = np.nan
    data[2, 2, 2] = np.inf
    p = _write(tmp_path / "nan.nii.gz", data)
    with pytest.raises(LungsegInputError, match=r"nan\.nii\.gz: 2 voxel"):
        load_nifti(p)


def test_shape_and_affine_mismatch(case_dir):
    ct = nib.load(str(case_dir / "ct.nii.gz"))
    _write(case_dir / "lung.nii.gz", np.zeros((5, 5, 5), np.uint8), ct.affine)
    with pytest.raises(LungsegInputError, match="shape"):
        load_case(case_dir)
    shifted = ct.affine.copy()
    shifted[0, 3] += 10
    _write(case_dir / "lung.nii.gz", np.zeros(ct.shape, np.uint8), shifted)
    with pytest.raises(LungsegInputError, match="affine"):
        load_case(case_dir)


def test_empty_mask_warns(case_dir):
    ct = nib.load(str(case_dir / "ct.nii.gz"))
    _write(case_dir / "lung.nii.gz", np.zeros(ct.shape, np.uint8), ct.affine)
    with pytest.warns(LungsegWarning, match="empty"):
        case = load_case(case_dir)
    assert case.mask.sum() == 0


@pytest.mark.parametrize("lo,hi,why", [(0.0, 1.0, r"\[0, 1\]"), (0.0, 4095.0, "raw scanner")])
def test_non_hu_intensities_warn(tmp_path, lo, hi, why):
    data = np.random.default_rng(0).uniform(lo, hi, (10, 10, 10)).astype(np.float32)
    p = _write(tmp_path / "odd.nii.gz", data)
    with pytest.warns(LungsegWarning, match=why):
        load_ct(p)


def test_real_hu_does_not_warn(case_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_ct(case_dir)


def test_save_nifti_atomic_keeps_affine_and_refuses_overwrite(tmp_path, case_dir):
    case = load_case(case_dir)
    out = tmp_path / "out" / "mask.nii.gz"
    save_nifti(case.mask, case.affine, out, header=case.header)
    img = nib.load(str(out))
    np.testing.assert_allclose(img.affine, case.affine)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), case.mask)
    assert img.get_data_dtype() == np.uint8
    with pytest.raises(LungsegInputError, match="exists"):
        save_nifti(case.mask, case.affine, out)
    save_nifti(case.mask * 0, case.affine, out, overwrite=True)
    assert np.asanyarray(nib.load(str(out)).dataobj).sum() == 0
    assert not list(out.parent.glob(".tmp_*"))


def test_split_is_patient_level_seeded_and_complete():
    ids = [f"patient_{i:03d}" for i in range(9)]
    a, b = make_split(ids, seed=7), make_split(ids, seed=7)
    assert a == b
    parts = a["train"] + a["val"] + a["test"]
    assert sorted(parts) == ids and len(set(parts)) == len(ids)
    assert len(a["test"]) == 2 and len(a["val"]) == 1
    assert make_split(ids, seed=8) != a
    with pytest.raises(LungsegInputError, match="twice"):
        make_split(ids + ids[:1])


def test_json_roundtrip_and_errors(tmp_path):
    p = save_json({"a": np.float32(1.5), "b": np.arange(3)}, tmp_path / "x.json")
    assert load_json(p) == {"a": 1.5, "b": [0, 1, 2]}
    with pytest.raises(LungsegInputError, match="exists"):
        save_json({}, p)
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(LungsegInputError, match="bad.json: not valid JSON"):
        load_json(tmp_path / "bad.json")


def test_demo_dataset_and_hash(tmp_path):
    folder = write_demo_dataset(tmp_path / "demo", n_cases=2)
    cases = discover_cases(folder)
    assert [c.name for c in cases] == ["synth_000", "synth_001"]
    case = load_case(cases[0])
    assert case.shape == (64, 64, 64) and case.mask.sum() > 1000
    assert len(file_sha256(cases[0] / "ct.nii.gz")) == 64


def test_atomic_write_renames_on_success_and_cleans_up_on_failure(tmp_path):
    target = tmp_path / "deep" / "folder" / "out.nii.gz"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".nii.gz")  # same suffix
        assert not target.exists()                           # nobody sees half a file
        tmp.write_bytes(b"one")
    assert target.read_bytes() == b"one"
    mode = stat.S_IMODE(os.stat(target).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask                            # ordinary, not mkstemp's 0600
    with pytest.raises(LungsegInputError, match="exists"):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"two")
    with pytest.raises(RuntimeError):
        with atomic_write(target, overwrite=True) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash while writing")
    assert target.read_bytes() == b"one"                     # the old file stands
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.nii.gz"]   # no temp left
    with atomic_write(target, overwrite=True) as tmp:
        tmp.write_bytes(b"three")
    assert target.read_bytes() == b"three"
    with atomic_write(tmp_path / "x.json", suffix=".tmp") as tmp:
        assert tmp.suffix == ".tmp"
        tmp.write_text("{}")


def test_atomic_write_of_a_folder_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "cases" / "patient_001"
    with atomic_write(target, folder=True) as tmp:
        assert tmp.is_dir() and tmp.parent == target.parent and not target.exists()
        (tmp / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o777 & ~umask
    with pytest.raises(LungsegInputError, match="folder exists"):
        with atomic_write(target, folder=True):
            pass
    with pytest.raises(KeyboardInterrupt):                   # Ctrl-C half way: old one stands
        with atomic_write(target, overwrite=True, folder=True) as tmp:
            (tmp / "b.txt").write_text("half")
            raise KeyboardInterrupt
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    with atomic_write(target, overwrite=True, folder=True) as tmp:   # replaces a full folder
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["patient_001"]   # no temp left


def test_stale_temps_of_a_killed_write_are_removed_but_never_an_input_or_a_live_writers(tmp_path):
    out, dead = tmp_path / "m.nii.gz", dead_pid()
    stale = tmp_path / f".tmp_m.nii.gz.{dead}.abc12345.nii.gz"   # what kill -9 left
    stale.write_bytes(b"half")
    live = tmp_path / f".tmp_m.nii.gz.{os.getppid()}.xyz12345.nii.gz"   # a running writer's
    live.write_bytes(b"being written")
    kept = tmp_path / f".tmp_m.nii.gz.{dead}.inp12345.nii.gz"    # an input that looks alike
    kept.write_bytes(b"input")
    scan = tmp_path / ".tmp_m.nii_scan.nii.gz"       # a user's scan (issue #27: was deleted)
    scan.write_bytes(b"scan")
    other = tmp_path / ".tmp_other_x.nii.gz"
    other.write_bytes(b"other")
    (tmp_path / f".tmp_case_1.{dead}.qwertyui").mkdir()         # a killed folder write
    assert remove_stale_temps(out, keep=[kept]) == [stale]
    assert kept.exists() and other.exists() and live.exists() and scan.exists()
    assert remove_stale_temps(tmp_path / "case_1", folder=True) == [
        tmp_path / f".tmp_case_1.{dead}.qwertyui"]
    assert remove_stale_temps(tmp_path / "missing" / "x.json") == []


def test_a_temporary_name_is_this_process_s_and_exclusive(tmp_path):
    out = tmp_path / "m.nii.gz"
    with atomic_write(out) as a, atomic_write(out, overwrite=True) as b:   # two writers at once
        assert a != b and a.name.startswith(f".tmp_m.nii.gz.{os.getpid()}.")
        assert remove_stale_temps(out) == []                 # neither is stale: both live
        a.write_bytes(b"a")
        b.write_bytes(b"b")
    assert out.read_bytes() == b"a" and not list(tmp_path.glob(".tmp_*"))


def test_a_full_disk_names_the_output_and_leaves_none_of_a_scan_s_files(tmp_path, monkeypatch):
    import errno

    mask, prob = tmp_path / "mask.nii.gz", tmp_path / "prob.nii.gz"
    data = np.zeros((4, 4, 4), np.uint8)

    def full_disk(img, filename):                        # the disk fills during the 2nd file
        if "prob" in str(filename):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(img, filename)

    real_save = nib.save
    monkeypatch.setattr(nib, "save", full_disk)
    with pytest.raises(LungsegInputError, match=r"prob\.nii\.gz: could not be written .*No space"):
        with all_or_nothing():
            save_nifti(data, np.eye(4), mask)
            save_nifti(data, np.eye(4), prob)
    assert list(tmp_path.iterdir()) == []                 # neither file, no temporary
    monkeypatch.setattr(nib, "save", real_save)
    with all_or_nothing():
        save_nifti(data, np.eye(4), mask)
        assert not mask.exists()                           # held back until the block ends
        save_json({"a": 1}, tmp_path / "s.json")
    assert mask.exists() and load_json(tmp_path / "s.json") == {"a": 1}


def test_portable_path_is_relative_inside_and_beside_the_repository(tmp_path):
    from lungseg_utils import config

    assert portable_path(config.REPO_ROOT / "results" / "reference") == "results/reference"
    beside = config.REPO_ROOT.parent / "shared" / "data" / "lctsc64"
    assert portable_path(beside) == "../shared/data/lctsc64"
    assert (config.REPO_ROOT / portable_path(beside)).resolve() == beside.resolve()
    if not tmp_path.resolve().is_relative_to(config.REPO_ROOT.parent):
        assert portable_path(tmp_path) == str(tmp_path.resolve())


def test_describe_case_and_format_table(case_dir):
    case = load_case(case_dir)
    row = describe_case(case)
    assert row["case_id"] == "patient_001" and row["shape"] == (24, 22, 20)
    assert row["spacing_mm"] == (12.0, 12.0, 14.0) and row["axcodes"] == "LPS"
    assert row["lung_volume_ml"] == pytest.approx(case.lung_volume_ml)
    assert row["lung_fraction"] == pytest.approx(case.mask.mean())
    assert row["lung_mean_hu"] == pytest.approx(case.ct_hu[case.mask > 0].mean())
    assert row["hu_min"] == case.ct_hu.min() and row["touches_border"] is False
    table = format_table([row, dict(row, case_id="patient_0002", lung_volume_ml=12.345)],
                         {"case_id": "", "lung_volume_ml": ".1f"})
    lines = table.splitlines()
    assert lines[0].split() == ["case_id", "lung_volume_ml"] and set(lines[1]) == {"-", " "}
    assert lines[3].split() == ["patient_0002", "12.3"]
    assert len({len(line) for line in lines}) == 1           # right-aligned columns


def test_load_cases_max_cases(tmp_path):
    folder = write_demo_dataset(tmp_path / "demo", n_cases=3)
    assert [c.case_id for c in load_cases(folder, max_cases=2)] == ["synth_000", "synth_001"]
    assert len(load_cases(folder)) == 3


def test_a_header_without_orientation_is_refused_unless_the_user_says_it(tmp_path):
    """Issue #27: qform and sform codes 0 — nibabel guesses an orientation, and for voxels
    stored right to left the right and left lungs would be swapped without a word."""
    data = np.zeros((6, 5, 4), np.int16)
    img = nib.Nifti1Image(data, affine=None)
    img.header.set_zooms((0.8, 0.8, 2.5))
    assert int(img.header["qform_code"]) == 0 and int(img.header["sform_code"]) == 0
    path = tmp_path / "no_orientation.nii.gz"
    nib.save(img, path)
    with pytest.raises(LungsegInputError, match=r"no_orientation\.nii\.gz: the header has no "
                                                r"orientation .*--assume_orientation"):
        load_nifti(path)
    _, affine, _ = load_ct(path, assume_hu=True, assume_orientation="LPS")
    assert "".join(nib.aff2axcodes(affine)) == "LPS"
    assert np.allclose(np.abs(np.diag(affine)[:3]), (0.8, 0.8, 2.5))
    _, affine, _ = load_ct(path, assume_hu=True, assume_orientation="ras")
    assert "".join(nib.aff2axcodes(affine)) == "RAS"
    with pytest.raises(LungsegInputError, match="--assume_orientation LLS: three letters"):
        load_ct(path, assume_hu=True, assume_orientation="LLS")


def test_hu_advice_fits_the_data_it_is_given():
    """Issue #27: for 8-bit data the advice was '--rescale 1 -1024', which finds no lungs."""
    from lungseg_utils.scan.reader import hu_problem

    picture = np.random.default_rng(0).integers(0, 256, (8, 8, 8)).astype(np.float32)
    why = hu_problem(picture)
    assert "-1024" not in why and "no rescale recovers HU" in why
    raw = np.random.default_rng(0).integers(0, 3000, (8, 8, 8)).astype(np.float32)
    assert "--rescale 1 -1024" in hu_problem(raw)      # raw scanner values: the intercept
    assert hu_problem(raw - 1024.0) is None


def test_hu_check_counts_instead_of_sorting_where_the_answer_is_the_same():
    """A chest CT passes when its 0.5th percentile is below -200 HU; the check counts the
    voxels below -200 first. Around the percentile's rank both must agree exactly."""
    from lungseg_utils.dataio import looks_like_hu

    rng = np.random.default_rng(1)
    for n in (1, 2, 201, 403, 1000, 2999):
        rank = int(0.005 * (n - 1))
        for below in range(0, min(n, rank + 4) + 1):
            ct = np.concatenate([rng.uniform(-1100, -200.5, below),
                                 rng.choice([-200.0, 0.0, 300.0, 255.0], n - below)])
            ct = rng.permutation(ct).astype(np.float32).reshape(-1, 1, 1)
            passes = float(np.percentile(ct, 0.5)) < -200.0
            assert looks_like_hu(ct) == passes, (n, below)
