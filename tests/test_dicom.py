"""DICOM input, right/left labels and the per-scan summary (bring your own scan).

The DICOM series are written from the real LCTSC scans by ``dicom.write_ct_series``
(pydicom), stored in other voxel orders, nested, mixed with a localizer and a second series,
so that what a scanner export looks like is read back to the same anatomy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lungseg_utils import dataio, geometry
from lungseg_utils.scan import dicom, quality, reader, segment, sides
from lungseg_utils.errors import LungsegInputError

ROOT = Path(__file__).resolve().parents[1]
DATA64 = ROOT.parent / "shared" / "data" / "lctsc64"
NATIVE = ROOT.parent / "shared" / "data" / "lctsc_native"
pytestmark = pytest.mark.skipif(not DATA64.is_dir(), reason="shared data not beside the checkout")


def _canonical(data, affine):
    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(data), affine))
    return np.asanyarray(img.dataobj), img.affine


def _flip_x(ct, affine):
    """The same anatomy stored with the first axis reversed."""
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, ct.shape[0] - 1
    return ct[::-1].copy(), affine @ flip


@pytest.fixture(scope="module")
def case64():
    return dataio.load_case(DATA64 / "patient_001")


def test_series_reads_back_to_the_same_anatomy_in_any_storage(case64, tmp_path):
    """A nested export with a localizer and a smaller second series: the CT series with most
    slices is read, in HU, with the affine of the NIfTI it came from (up to the voxel order)."""
    ct, affine = _flip_x(case64.ct_hu, case64.affine)
    files = dicom.write_ct_series(ct, affine, tmp_path / "export" / "STUDY" / "SER1")
    for i, f in enumerate(files[::-1]):                 # file names no longer in slice order
        f.rename(f.with_name(f"IM{i:05d}"))
    dicom.write_ct_series(ct[:, :, :5], affine, tmp_path / "export" / "STUDY" / "SER2")
    import pydicom

    scout = pydicom.dcmread(next((tmp_path / "export" / "STUDY" / "SER2").iterdir()))
    scout.ImageType, scout.SeriesInstanceUID = ["ORIGINAL", "PRIMARY", "LOCALIZER"], "1.2.3"
    scout.save_as(tmp_path / "export" / "scout.dcm")
    (tmp_path / "export" / "README.txt").write_text("not DICOM")

    got, got_affine, _, info = reader.load_scan(tmp_path / "export")
    assert info["format"] == "dicom" and info["n_slices"] == ct.shape[2]
    assert len(info["other_series"]) == 1                # SER2; the localizer is not a series
    a, a_aff = _canonical(np.round(case64.ct_hu), case64.affine)
    b, b_aff = _canonical(got, got_affine)
    np.testing.assert_allclose(b_aff, a_aff, atol=1e-4)
    np.testing.assert_array_equal(b, a)
    small = reader.load_scan(tmp_path / "export", series_uid=info["other_series"][0])[0]
    assert small.shape[2] == 5


@pytest.mark.parametrize("problem", ["missing", "duplicate", "orientation", "tilt", "none", "not_ct",
                                     "frames", "compressed"])
def test_series_that_are_not_one_regular_volume_are_refused_in_one_line(case64, tmp_path, problem):
    ct = case64.ct_hu[:, :, :8]
    folder = tmp_path / "series"
    files = dicom.write_ct_series(ct, case64.affine, folder)
    import pydicom

    def edit(path, **values):
        ds = pydicom.dcmread(path)
        for key, value in values.items():
            setattr(ds, key, value)
        ds.save_as(path)

    first = pydicom.dcmread(files[0])
    if problem == "missing":
        files[4].unlink()
    elif problem == "duplicate":
        edit(files[4], ImagePositionPatient=list(first.ImagePositionPatient))
    elif problem == "orientation":
        edit(files[4], ImageOrientationPatient=[0, 1, 0, 1, 0, 0])
    elif problem == "tilt":
        for k, f in enumerate(files):
            pos = list(pydicom.dcmread(f).ImagePositionPatient)
            edit(f, ImagePositionPatient=[pos[0], pos[1] + 0.5 * k, pos[2]])
    elif problem == "none":
        for f in files:
            f.unlink()
    elif problem == "not_ct":
        for f in files:
            edit(f, Modality="MR")
    elif problem == "frames":
        edit(files[4], FrameOfReferenceUID="1.2.826.0.1.3680043.2.1143.1")
    elif problem == "compressed":              # claims JPEG 2000, holds bytes no decoder reads
        ds = pydicom.dcmread(files[4])
        ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEG2000Lossless
        ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 64])
        ds.save_as(files[4], enforce_file_format=True)
    words = {"missing": "missing", "duplicate": "share a position", "orientation": "orientation",
             "tilt": "tilt", "none": "no DICOM files", "not_ct": "no CT image series",
             "frames": "frames of reference", "compressed": "cannot be decoded"}[problem]
    with pytest.raises(LungsegInputError, match=words) as err:
        reader.load_scan(folder)
    assert str(folder) in str(err.value) and "\n" not in str(err.value)


def test_right_and_left_follow_the_patient_not_the_voxel_order(case64):
    """On every reference scan the two sides are the header's: reversing the first axis, or
    both in-plane axes, gives the same labels at the same anatomy; the lungs are two parts of
    plausible size and the right is where world x (RAS) is larger."""
    for case in [case64, dataio.load_case(DATA64 / "patient_006")]:
        labels = sides.split_left_right(case.mask, case.affine)
        assert set(np.unique(labels)) == {0, 1, 2}
        np.testing.assert_array_equal(labels != 0, case.mask != 0)
        flipped = sides.split_left_right(*_flip_x(case.mask, case.affine))
        np.testing.assert_array_equal(flipped[::-1], labels)
        ijk = np.indices(case.shape).reshape(3, -1)
        world_x = (case.affine[0, :3] @ ijk + case.affine[0, 3]).reshape(case.shape)
        assert world_x[labels == 1].mean() > world_x[labels == 2].mean()
        share = (labels == 1).sum() / (labels > 0).sum()
        assert 0.3 < share < 0.7


def test_touching_lungs_are_split_and_one_blob_splits_at_the_midline():
    """Two boxes joined by a bridge: erosion separates them and each box keeps its side.
    One box alone: the sagittal plane through its centre divides it in halves."""
    mask = np.zeros((40, 20, 20), np.uint8)
    mask[4:16, 4:16, 4:16] = mask[24:36, 4:16, 4:16] = 1
    mask[16:24, 9:11, 9:11] = 1                               # the bridge
    ras = np.diag([2.0, 2.0, 2.0, 1.0])                       # world x grows with i
    labels = sides.split_left_right(mask, ras)
    assert (labels[24:36, 4:16, 4:16] == sides.RIGHT_LUNG).all()
    assert (labels[4:16, 4:16, 4:16] == sides.LEFT_LUNG).all()
    one = np.zeros_like(mask)
    one[10:30, 4:16, 4:16] = 1
    split = sides.split_left_right(one, ras)
    assert (split == 1).sum() == (split == 2).sum() == one.sum() // 2


def test_summary_flags_what_a_person_should_look_at(case64):
    ct, mask, affine = case64.ct_hu, case64.mask, case64.affine
    good = quality.scan_summary(mask, ct, affine)
    assert good["quality"] == {"flag": "ok", "reasons": []}
    assert good["right_lung_ml"] + good["left_lung_ml"] == pytest.approx(good["lung_volume_ml"], abs=0.2)
    assert good["lung_volume_ml"] == pytest.approx(case64.lung_volume_ml, abs=0.1)
    labels = sides.split_left_right(mask, affine)
    one_side = quality.scan_summary(labels == sides.RIGHT_LUNG, ct, affine)
    assert one_side["quality"]["flag"] == "check"
    assert any("left lung holds only" in r for r in one_side["quality"]["reasons"])
    cut = mask.copy()
    cut[:8] = 0
    cut[8] = np.maximum(cut[8], mask[8])
    cropped = quality.scan_summary(mask[6:], ct[6:], affine)   # cut off by the field of view
    assert any("edge" in r for r in cropped["quality"]["reasons"])
    assert any("HU" in r for r in quality.scan_summary(mask, ct + 1024, affine)["quality"]["reasons"])


@pytest.mark.skipif(not NATIVE.is_dir(), reason="native data not beside the checkout")
def test_command_reads_dicom_and_gives_the_nifti_answer(tmp_path):
    """The inference command on a DICOM export of a native scan (written from the NIfTI,
    HU as int16 in both): the mask has the series' shape and affine, with --labels lr 1 = right and 2 = left, and is the mask the same
    command writes for the NIfTI file at the same anatomy; the summary JSON says which
    series it read and the volumes."""
    ct, affine, _ = reader.load_ct(NATIVE / "patient_003")
    nifti = tmp_path / "ct.nii.gz"
    dataio.save_nifti(np.round(ct).astype(np.int16), affine, nifti)
    # as a scanner exports it: uint16 pixels with intercept -1024, file names in no order,
    # a localizer in the same folder
    files = dicom.write_ct_series(ct, affine, tmp_path / "dicom" / "series", unsigned=True)
    import pydicom

    assert pydicom.dcmread(files[0]).PixelRepresentation == 0
    for i, f in enumerate(np.random.default_rng(0).permutation(files)):
        f.rename(f.with_name(f"X{i:04d}.IMA"))
    scout = pydicom.dcmread(next((tmp_path / "dicom" / "series").iterdir()))
    scout.ImageType, scout.SeriesInstanceUID = ["ORIGINAL", "PRIMARY", "LOCALIZER"], "1.2.3"
    scout.SOPInstanceUID = scout.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    scout.save_as(tmp_path / "dicom" / "series" / "scout")
    # one member of the reference: the question is DICOM against NIfTI, not the ensemble
    member = next((ROOT / "results" / "reference" / "cv" / "fold_0").glob("run_*/best_model.keras"))
    run = [sys.executable, "-m", "lungseg_utils.inference", "--model", str(member)]
    # the NIfTI answer in this process, the DICOM one through the command as people run it
    assert segment.main(["--model", str(member), "--input", str(nifti), "--output_mask",
                         str(tmp_path / "a.nii.gz")]) == 0
    done = subprocess.run(run + ["--input", str(tmp_path / "dicom"), "--output_mask",
                                 str(tmp_path / "b.nii.gz"), "--labels", "lr", "--output_json",
                                 str(tmp_path / "b.json")],
                          check=True, capture_output=True, text=True, cwd=ROOT)
    assert "right" in done.stdout and "quality" in done.stdout
    a, b = nib.load(tmp_path / "a.nii.gz"), nib.load(tmp_path / "b.nii.gz")
    series_ct, series_affine, _, _ = reader.load_scan(tmp_path / "dicom")
    assert b.shape == series_ct.shape
    np.testing.assert_allclose(b.affine, series_affine, atol=1e-4)
    a_canon, _ = _canonical(np.asanyarray(a.dataobj), a.affine)
    b_canon, _ = _canonical(np.asanyarray(b.dataobj), b.affine)
    assert set(np.unique(b_canon)) == {0, 1, 2}
    differ = int(((a_canon > 0) != (b_canon > 0)).sum())
    assert differ <= 1e-6 * a_canon.size, differ
    summary = json.loads((tmp_path / "b.json").read_text())
    assert summary["input"]["format"] == "dicom" and summary["labels"] == "lr"
    assert summary["right_lung_ml"] > 0 and summary["left_lung_ml"] > 0
    assert summary["input"]["orientation"] == "".join(nib.aff2axcodes(series_affine))
    assert summary["model"]["members"] >= 1 and len(summary["model"]["sha256"]) == 64
    assert summary["seconds"] > 0 and summary["quality"]["flag"] in ("ok", "check")
    assert 0.9 < summary["baseline_agreement"] <= 1.0
    if summary["model"]["members"] > 1:
        assert 0.9 < summary["members_agreement"] <= 1.0
    volume_a = (a_canon > 0).sum() * float(np.prod(geometry.spacing_from_affine(a.affine))) / 1000
    assert summary["lung_volume_ml"] == pytest.approx(volume_a, rel=0.02)
    voxel_ml = float(np.prod(geometry.spacing_from_affine(b.affine))) / 1000
    right = (np.asanyarray(b.dataobj) == 1).sum() * voxel_ml
    assert summary["right_lung_ml"] == pytest.approx(right, abs=0.1)
    labels = np.asanyarray(b.dataobj)            # 1 is the patient's right: larger world x (RAS)
    x_world = {k: (b.affine @ [*np.argwhere(labels == k).mean(axis=0), 1.0])[0] for k in (1, 2)}
    assert x_world[1] > x_world[2]


def test_one_lung_in_a_cropped_field_of_view_is_not_split_at_half_a_body():
    """Issue #27: with only the right lung in view (the field of view cut at the midline) the
    body's centre is not the midline; the lung was split there (right 536 mL, left 2,298 mL).
    Now the side is said to be unknown; with the whole body in view a lone lung keeps its side."""
    from lungseg_utils.config import native_data_dir

    if native_data_dir() is None:
        pytest.skip("needs the native scans (../shared/data/lctsc_native)")
    case = dataio.load_case(native_data_dir() / "patient_003")
    ct, mask, affine = case.ct_hu, case.mask, case.affine
    labels = sides.split_left_right(mask, affine)
    ijk = np.indices(ct.shape).reshape(3, -1)
    world_x = (affine[0, :3] @ ijk + affine[0, 3]).reshape(ct.shape)
    right_x = world_x[labels == sides.RIGHT_LUNG].mean()
    lateral = int(np.argmax(np.abs(affine[0, :3])))
    midline = quality.body_midline_x_mm(ct, affine)
    assert np.isfinite(midline)                              # the whole body: its centre
    # keep the voxels on the right lung's side of the midline: half a body, one lung
    keep = np.sign(world_x - midline) == np.sign(right_x - midline)
    index = np.flatnonzero(keep.any(axis=tuple(a for a in range(3) if a != lateral)))
    crop = [slice(None)] * 3
    crop[lateral] = slice(index.min(), index.max() + 1)
    shift = np.eye(4)
    shift[lateral, 3] = index.min()
    ct_c, mask_c, aff_c = ct[tuple(crop)], (labels == sides.RIGHT_LUNG)[tuple(crop)], affine @ shift
    assert not np.isfinite(quality.body_midline_x_mm(ct_c, aff_c))   # cut off: no midline
    summary = quality.scan_summary(mask_c, ct_c, aff_c, baseline=False)
    assert summary["right_lung_ml"] is None and summary["left_lung_ml"] is None
    assert any("cannot be told apart" in r for r in summary["quality"]["reasons"])
    assert summary["lung_volume_ml"] > 0
    whole = quality.scan_summary(labels == sides.RIGHT_LUNG, ct, affine, baseline=False)
    assert whole["left_lung_ml"] < 0.01 * whole["lung_volume_ml"]   # a lone lung, whole
    assert whole["right_lung_ml"] > 0.99 * whole["lung_volume_ml"]  # body: its own side
