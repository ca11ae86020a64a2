"""The DICOM SEG output: it reopens with highdicom over the series' own geometry.

A small synthetic CT series (two lungs in a body) is written by ``dicom.write_ct_series`` in
three storage orders (so the images' orientation and slice order differ); the SEG written
from its right/left labels is read back with highdicom, and each frame must land on the CT
image at the same position with the same pixels. Geometry that does not match is refused in
one line, and so are existing or source files as the output.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

import lungseg_utils
from lungseg_utils.scan import dicom, segment
from lungseg_utils.scan.dicom_seg import write_seg
from lungseg_utils.errors import LungsegInputError
from lungseg_utils.geometry import lps_affine

hd = pytest.importorskip("highdicom")
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


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


def _stored(storage, ct, labels, affine):
    """The same anatomy stored in another order: first and slice axis reversed, or the
    image's rows and columns swapped (the DICOM orientation and slice order change)."""
    if storage == "flipped":
        flip = np.diag([-1.0, 1.0, -1.0, 1.0])
        flip[0, 3], flip[2, 3] = ct.shape[0] - 1, ct.shape[2] - 1
        return ct[::-1, :, ::-1].copy(), labels[::-1, :, ::-1].copy(), affine @ flip
    if storage == "transposed":
        return (ct.transpose(1, 0, 2).copy(), labels.transpose(1, 0, 2).copy(),
                affine[:, [1, 0, 2, 3]])
    return ct, labels, affine


def _series(tmp_path, storage="as made"):
    """Write the series; return (files, labels on the grid as loaded, loaded affine, info)."""
    ct, labels, affine = _stored(storage, *_phantom())
    files = dicom.write_ct_series(ct, affine, tmp_path / "series")
    loaded, loaded_affine, _, info = dicom.load_dicom_ct(tmp_path / "series")
    # the labels on the grid as loaded (that is what the inference command writes)
    ijk = np.r_[np.indices(ct.shape).reshape(3, -1), np.ones((1, ct.size))]
    vox = np.round(np.linalg.inv(loaded_affine) @ affine @ ijk).astype(int)
    on_grid = np.zeros(loaded.shape, np.uint8)
    on_grid[tuple(vox[:3])] = labels.ravel()
    assert on_grid.sum() == labels.sum() and set(np.unique(on_grid)) == {0, 1, 2}
    return files, on_grid, loaded_affine, info


def _position(ds):
    return np.array([float(v) for v in ds.ImagePositionPatient])


@pytest.mark.parametrize("storage", ["as made", "flipped", "transposed"])
def test_seg_reopens_on_the_series_geometry(tmp_path, storage):
    files, on_grid, affine, info = _series(tmp_path, storage)
    out = write_seg(on_grid, affine, files[::-1], tmp_path / "seg.dcm")     # any file order

    seg = hd.seg.segread(out)
    assert seg.SOPClassUID == SEG_STORAGE and seg.Modality == "SEG"
    assert seg.SegmentationType == "BINARY"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == info["series_uid"]
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == len(files)
    assert seg.SeriesNumber == 900 and seg.SeriesDescription == "lungseg lungs"
    assert seg.Manufacturer == "lungseg" and seg.SoftwareVersions == lungseg_utils.__version__
    assert [(s.SegmentNumber, s.SegmentLabel) for s in seg.SegmentSequence] == [
        (1, "Right lung"), (2, "Left lung")]
    for s, code in zip(seg.SegmentSequence, ("3341006", "44029006")):
        assert s.SegmentedPropertyTypeCodeSequence[0].CodeValue == code
        assert s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
        assert s.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
        assert s.SegmentAlgorithmType == "AUTOMATIC"
        assert s.SegmentAlgorithmName == "lungseg 3D U-Net"

    cts = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in info["files"])}
    for k, ds in enumerate(cts.values()):                # each CT image and its frame
        mask = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[ds.SOPInstanceUID], combine_segments=True)[0]
        np.testing.assert_array_equal(mask, on_grid[:, :, k].T)
    assert len(seg.PerFrameFunctionalGroupsSequence) == 2 * len(files)  # no frame omitted
    for frame in seg.PerFrameFunctionalGroupsSequence:   # each frame at its CT image's place
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        np.testing.assert_allclose(_position(frame.PlanePositionSequence[0]),
                                   _position(cts[str(source.ReferencedSOPInstanceUID)]),
                                   atol=1e-4)


def test_one_lung_label_and_named_segments(tmp_path):
    files, on_grid, affine, _ = _series(tmp_path)
    seg = hd.seg.segread(write_seg((on_grid > 0).astype(np.uint8), affine, files,
                                   tmp_path / "lung.dcm", model_name="my net"))
    assert [(s.SegmentLabel, s.SegmentedPropertyTypeCodeSequence[0].CodeValue)
            for s in seg.SegmentSequence] == [("Lung", "39607008")]
    assert seg.ManufacturerModelName == "my net"
    assert seg.SegmentSequence[0].SegmentAlgorithmName == "my net"
    right_only = np.where(on_grid == 1, 1, 0).astype(np.uint8)  # 'lr' even without label 2
    seg = hd.seg.segread(write_seg(right_only, affine, files, tmp_path / "lr.dcm",
                                   label_kind="lr"))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Right lung", "Left lung"]
    seg = hd.seg.segread(write_seg(on_grid, affine, files, tmp_path / "names.dcm",
                                   label_names=["right lung", "LEFT LUNG"]))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Right lung", "Left lung"]
    with pytest.raises(LungsegInputError, match=r"values \[0, 1, 2\].*1..1 \(Lung\)"):
        write_seg(on_grid, affine, files, tmp_path / "x.dcm", label_names=["Lung"])
    with pytest.raises(LungsegInputError, match="no code for segment label"):
        write_seg(on_grid, affine, files, tmp_path / "x.dcm", label_names=["Lung", "Heart"])


def _one_line(excinfo, *names):
    text = str(excinfo.value)
    assert "\n" not in text and all(str(n) in text for n in names), text


def test_seg_refuses_mismatched_geometry_and_paths(tmp_path):
    files, labels, affine, info = _series(tmp_path)
    shifted = affine.copy()
    shifted[2, 3] += 3.0                                    # slices 3 mm off the series'
    with pytest.raises(LungsegInputError, match="does not lie on the mask's grid") as e:
        write_seg(labels, shifted, files, tmp_path / "a.dcm")
    _one_line(e, "slice_")
    mirrored = affine.copy()
    mirrored[:3, 0] *= -1                                   # same origin, other orientation
    with pytest.raises(LungsegInputError, match="orientation or pixel spacing") as e:
        write_seg(labels, mirrored, files, tmp_path / "a.dcm")
    _one_line(e, "slice_")
    with pytest.raises(LungsegInputError, match="must be one grid") as e:
        write_seg(labels[:, :, :5], affine, files, tmp_path / "a.dcm")
    _one_line(e, "a.dcm")
    with pytest.raises(LungsegInputError, match="same slice of the mask") as e:
        write_seg(labels, affine, files[:-1] + files[:1], tmp_path / "a.dcm")
    _one_line(e, files[0])
    with pytest.raises(LungsegInputError, match="pixels") as e:
        write_seg(labels[:-1], affine, files, tmp_path / "a.dcm")
    _one_line(e, "slice_")
    other = dicom.write_ct_series(np.zeros((32, 28, 10), np.float32), affine, tmp_path / "o")
    with pytest.raises(LungsegInputError, match="span 2 SeriesInstanceUIDs") as e:
        write_seg(labels, affine, files[:-1] + other[-1:], tmp_path / "a.dcm")
    _one_line(e)
    with pytest.raises(LungsegInputError, match="one of the CT series") as e:
        write_seg(labels, affine, files, files[0], overwrite=True)
    _one_line(e, files[0])
    (tmp_path / "b.dcm").write_bytes(b"x")
    with pytest.raises(LungsegInputError, match="exists") as e:
        write_seg(labels, affine, files, tmp_path / "b.dcm")
    _one_line(e, "b.dcm")
    assert (tmp_path / "b.dcm").read_bytes() == b"x"
    write_seg(labels, affine, files, tmp_path / "b.dcm", overwrite=True)
    assert hd.seg.segread(tmp_path / "b.dcm").SOPClassUID == SEG_STORAGE
    assert not list(tmp_path.glob(".tmp_*")) and not (tmp_path / "a.dcm").exists()


def test_command_writes_a_seg_only_for_dicom_input(tmp_path, smoke_model_path, capsys):
    ct, _, affine = _phantom()
    dicom.write_ct_series(ct, affine, tmp_path / "series")
    rc = segment.main(["--model", str(smoke_model_path), "--input", str(tmp_path / "series"),
                         "--output_mask", str(tmp_path / "m.nii.gz"), "--labels", "lr",
                         "--output_seg", str(tmp_path / "m_seg.dcm"), "--assume_hu"])
    assert rc == 0, capsys.readouterr().err
    assert hd.seg.segread(tmp_path / "m_seg.dcm").Modality == "SEG"
    nifti = tmp_path / "ct.nii.gz"
    import nibabel as nib

    nib.save(nib.Nifti1Image(ct.astype(np.int16), affine), str(nifti))
    rc = segment.main(["--model", str(smoke_model_path), "--input", str(nifti),
                         "--output_mask", str(tmp_path / "n.nii.gz"),
                         "--output_seg", str(tmp_path / "n_seg.dcm")])
    assert rc == 2 and "--output_seg needs" in capsys.readouterr().err
