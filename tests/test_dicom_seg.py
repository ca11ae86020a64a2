"""The DICOM SEG output: it reopens with highdicom over the series' own geometry.

A small synthetic CT series (two lungs in a body) is written by ``dicom.write_ct_series`` in
two storage orders; the SEG written from its right/left labels is read back with highdicom,
and each frame must land on the CT image at the same position with the same pixels.
"""

from __future__ import annotations

import numpy as np
import pytest

from lungseg_utils import dicom, inference
from lungseg_utils.dicom_seg import write_seg
from lungseg_utils.errors import LungsegInputError
from lungseg_utils.geometry import lps_affine

hd = pytest.importorskip("highdicom")


def _phantom(shape=(32, 28, 10), spacing=(6.0, 6.0, 8.0)):
    """CT (0 HU body, two -800 HU 'lungs'), their labels (1 right, 2 left), an LPS affine."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    ct = np.full(shape, -1000.0, np.float32)
    ct[((x - 16) / 14) ** 2 + ((y - 14) / 12) ** 2 <= 1] = 0.0
    labels = np.zeros(shape, np.uint8)
    for cx, value in ((10, 1), (22, 2)):           # LPS: low x index = patient's right
        inside = ((x - cx) / 4) ** 2 + ((y - 14) / 6) ** 2 + ((z - 5) / 4) ** 2 <= 1
        ct[inside], labels[inside] = -800.0, value
    return ct, labels, lps_affine(shape, spacing, (3.0, -2.0, 40.0))


def _flipped(ct, labels, affine):
    """The same anatomy stored with the first and the slice axis reversed."""
    flip = np.diag([-1.0, 1.0, -1.0, 1.0])
    flip[0, 3], flip[2, 3] = ct.shape[0] - 1, ct.shape[2] - 1
    return ct[::-1, :, ::-1].copy(), labels[::-1, :, ::-1].copy(), affine @ flip


@pytest.mark.parametrize("storage", ["as made", "flipped"])
def test_seg_reopens_on_the_series_geometry(tmp_path, storage):
    ct, labels, affine = _phantom()
    if storage == "flipped":
        ct, labels, affine = _flipped(ct, labels, affine)
    files = dicom.write_ct_series(ct, affine, tmp_path / "series")
    loaded, loaded_affine, _, info = dicom.load_dicom_ct(tmp_path / "series")
    # the labels on the grid as loaded (that is what the inference command writes)
    vox = np.round(np.linalg.inv(loaded_affine) @ affine @ np.r_[np.indices(ct.shape).reshape(3, -1),
                                                                   np.ones((1, ct.size))]).astype(int)
    on_grid = np.zeros(loaded.shape, np.uint8)
    on_grid[tuple(vox[:3])] = labels.ravel()
    out = write_seg(on_grid, loaded_affine, files[::-1], tmp_path / "seg.dcm")   # any file order

    seg = hd.seg.segread(out)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"           # Segmentation Storage
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == info["series_uid"]
    assert [(s.SegmentNumber, s.SegmentLabel) for s in seg.SegmentSequence] == [
        (1, "Right lung"), (2, "Left lung")]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "3341006"
    import pydicom

    for k, path in enumerate(info["files"]):                # each CT image and its frame
        ct_ds = pydicom.dcmread(path, stop_before_pixels=True)
        frames = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[ct_ds.SOPInstanceUID], combine_segments=True)[0]
        np.testing.assert_array_equal(frames, on_grid[:, :, k].T)
    positions = {tuple(np.round([float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient], 3))
                 for f in seg.PerFrameFunctionalGroupsSequence}
    ct_positions = {tuple(np.round([float(v) for v in pydicom.dcmread(p).ImagePositionPatient], 3))
                    for p in files}
    assert positions == ct_positions


def test_seg_refuses_a_mask_of_another_grid_and_an_existing_file(tmp_path):
    ct, labels, affine = _phantom()
    files = dicom.write_ct_series(ct, affine, tmp_path / "series")
    loaded, loaded_affine, _, info = dicom.load_dicom_ct(tmp_path / "series")
    shifted = loaded_affine.copy()
    shifted[2, 3] += 3.0                                    # slices 3 mm off the series'
    with pytest.raises(LungsegInputError, match="does not lie on the mask's grid"):
        write_seg(labels, shifted, files, tmp_path / "a.dcm")
    with pytest.raises(LungsegInputError, match="must be one grid"):
        write_seg(labels[:, :, :5], loaded_affine, files, tmp_path / "a.dcm")
    with pytest.raises(LungsegInputError, match="one of the CT series"):
        write_seg(labels, loaded_affine, files, files[0], overwrite=True)
    (tmp_path / "b.dcm").write_bytes(b"x")
    with pytest.raises(LungsegInputError, match="exists"):
        write_seg(labels, loaded_affine, files, tmp_path / "b.dcm")
    assert not list(tmp_path.glob(".tmp_*"))


def test_command_writes_a_seg_only_for_dicom_input(tmp_path, smoke_model_path, capsys):
    ct, _, affine = _phantom()
    dicom.write_ct_series(ct, affine, tmp_path / "series")
    rc = inference.main(["--model", str(smoke_model_path), "--input", str(tmp_path / "series"),
                         "--output_mask", str(tmp_path / "m.nii.gz"), "--labels", "lr",
                         "--output_seg", str(tmp_path / "m_seg.dcm"), "--assume_hu"])
    assert rc == 0, capsys.readouterr().err
    assert hd.seg.segread(tmp_path / "m_seg.dcm").Modality == "SEG"
    nifti = tmp_path / "ct.nii.gz"
    import nibabel as nib

    nib.save(nib.Nifti1Image(ct.astype(np.int16), affine), str(nifti))
    rc = inference.main(["--model", str(smoke_model_path), "--input", str(nifti),
                         "--output_mask", str(tmp_path / "n.nii.gz"),
                         "--output_seg", str(tmp_path / "n_seg.dcm")])
    assert rc == 2 and "--output_seg needs" in capsys.readouterr().err
