"""The LCTSC downloader and converter, offline.

These machines cannot reach TCIA, so: the conversion runs on a synthetic CT series and an
RTSTRUCT that the test writes with pydicom (two ellipsoid lungs whose voxels are known), and
the download logic runs against recorded ``getSeries`` answers (``tests/recorded/``, in the
NBIA v1 API's JSON format, written by hand from its documented fields) and ZIPs the test
builds, through the module's ``fetch(url) -> bytes`` transport.
"""

from __future__ import annotations

import io as bytes_io
import urllib.error
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lungseg_utils.scan import lctsc, dicom, rtstruct
from lungseg_utils import dataio
from lungseg_utils.errors import LungsegInputError
from lungseg_utils.geometry import lps_affine

RECORDED = Path(__file__).parent / "recorded"
SHAPE, SPACING = (96, 80, 24), (2.0, 2.0, 5.0)
LUNGS = {"Lung_R": (-45.0, 0.0, 0.0), "Lung_L": (45.0, 0.0, 0.0)}   # centres, LPS mm
AXES_MM = (30.0, 45.0, 40.0)


def _series(folder: Path):
    """A CT series of a body with two ellipsoid lungs; returns (files, affine, true mask)."""
    affine = lps_affine(SHAPE, SPACING, (0.0, 0.0, 0.0))
    ijk = np.indices(SHAPE).reshape(3, -1)
    ras = (affine @ np.r_[ijk, np.ones((1, ijk.shape[1]))])[:3]
    lps = ras * np.array([[-1.0], [-1.0], [1.0]])
    ct = np.full(ijk.shape[1], 40.0, np.float32)
    truth = np.zeros(ijk.shape[1], bool)
    for centre in LUNGS.values():
        truth |= (((lps - np.array(centre)[:, None]) / np.array(AXES_MM)[:, None]) ** 2).sum(0) <= 1
    ct[truth] = -850.0
    ct, truth = ct.reshape(SHAPE), truth.reshape(SHAPE)
    return dicom.write_ct_series(ct, affine, folder), affine, truth


def _ellipse(centre, z_mm, n=72):
    """The lung ellipsoid's cut at height z: a closed polygon (n, 3) in LPS mm, or None."""
    a, b, c = AXES_MM
    r = 1.0 - ((z_mm - centre[2]) / c) ** 2
    if r <= 0:
        return None
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.column_stack([centre[0] + a * np.sqrt(r) * np.cos(t),
                            centre[1] + b * np.sqrt(r) * np.sin(t), np.full(n, z_mm)])


def _rtstruct(path: Path, ct_files, names=("Lung_L", "Lung_R")):
    """An RTSTRUCT with one closed contour per slice and lung, as LCTSC's (pydicom)."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    first = pydicom.dcmread(ct_files[0], stop_before_pixels=True)
    zs = sorted(float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2])
                for f in ct_files)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "RTSTRUCT", first.PatientID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = first.StudyInstanceUID, generate_uid()
    ds.StructureSetROISequence, ds.ROIContourSequence = [], []
    for number, name in enumerate(names, start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName = number, name
        ds.StructureSetROISequence.append(roi)
        contours = Dataset()
        contours.ReferencedROINumber, contours.ContourSequence = number, []
        centre = LUNGS.get("Lung_" + name[-1].upper(), (0.0, 0.0, 0.0))
        for z in zs:
            poly = _ellipse(centre, z)
            if poly is not None:
                item = Dataset()
                item.ContourGeometricType = "CLOSED_PLANAR"
                item.NumberOfContourPoints = len(poly)
                item.ContourData = [round(float(v), 3) for v in poly.ravel()]
                contours.ContourSequence.append(item)
        ds.ROIContourSequence.append(contours)
    ds.save_as(path, enforce_file_format=True)
    return path


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_contours_fill_the_known_lungs_and_names_match_in_any_case(tmp_path):
    files, affine, truth = _series(tmp_path / "ct")
    loaded, ras_affine, _, _ = dicom.load_dicom_ct(tmp_path / "ct")
    rt = _rtstruct(tmp_path / "rt.dcm", files, names=("LUNG_l", "lung_R"))
    mask = rtstruct.lung_mask_from_rtstruct(rt, ras_affine, loaded.shape)
    assert mask.dtype == np.uint8 and mask.shape == loaded.shape
    # the loaded grid may store the axes otherwise: compare in world order
    a = nib.as_closest_canonical(nib.Nifti1Image(mask, ras_affine)).get_fdata() > 0
    b = nib.as_closest_canonical(nib.Nifti1Image(truth.astype(np.uint8), affine)).get_fdata() > 0
    assert _dice(a, b) > 0.95
    rt2 = _rtstruct(tmp_path / "rt2.dcm", files, names=("Lung_L", "Heart"))
    with pytest.raises(LungsegInputError, match="no ROI named Lung_R") as err:
        rtstruct.lung_mask_from_rtstruct(rt2, ras_affine, loaded.shape)
    assert str(rt2) in str(err.value) and "\n" not in str(err.value)


def test_conversion_writes_both_layouts_as_described(tmp_path):
    files, affine, truth = _series(tmp_path / "ct")
    rt = _rtstruct(tmp_path / "rt.dcm", files)
    written = lctsc.convert_case(tmp_path / "ct", rt, tmp_path / "out", "case_a")
    assert set(written) == {f"{layout}/case_a/{n}" for layout in ("lctsc_native", "lctsc64")
                            for n in (dataio.CT_NAME, dataio.MASK_NAME)}
    native = dataio.load_case(tmp_path / "out" / "lctsc_native" / "case_a")
    course = dataio.load_case(tmp_path / "out" / "lctsc64" / "case_a")
    assert native.ct_hu.shape == (SHAPE[0] // 2, SHAPE[1] // 2, SHAPE[2])
    np.testing.assert_allclose(native.spacing_mm, (4.0, 4.0, 5.0), atol=1e-4)
    assert course.ct_hu.shape == (64, 64, 64)
    np.testing.assert_allclose(course.spacing_mm, (5.0, 5.0, 5.0), atol=1e-6)
    assert nib.aff2axcodes(course.affine) == ("L", "P", "S")
    for layout, case in (("lctsc_native", native), ("lctsc64", course)):
        folder = tmp_path / "out" / layout / "case_a"
        assert nib.load(str(folder / dataio.CT_NAME)).get_data_dtype() == np.int16
        assert nib.load(str(folder / dataio.MASK_NAME)).get_data_dtype() == np.uint8
        assert case.ct_hu.min() >= -1024 and case.ct_hu.max() <= 3071
    volume = {k: c.mask.sum() * np.prod(c.spacing_mm) for k, c in (("n", native), ("c", course))}
    true_ml = truth.sum() * np.prod(SPACING)
    assert volume["n"] == pytest.approx(true_ml, rel=0.03)
    # small lungs (6 x 9 x 8 cm) at 5 mm lose a few percent at their edge; real ones < 0.5 %
    assert volume["c"] == pytest.approx(volume["n"], rel=0.05)
    idx = np.argwhere(course.mask)                  # the cube is centred on the lungs
    centre = (course.affine @ np.r_[(idx.min(0) + idx.max(0)) / 2, 1])[:3]
    assert np.abs(centre).max() <= 5.0
    assert (course.ct_hu[0] == -1024).all()          # padded beyond the 192 mm wide scan
    with pytest.raises(LungsegInputError, match="exists"):
        lctsc.convert_case(tmp_path / "ct", rt, tmp_path / "out", "case_a")


DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(not (DATA / "lctsc64").is_dir(), reason="shared data not beside the checkout")
def test_course_layout_of_a_native_scan_matches_the_course_data():
    """The course format made from a near-native scan lands where the course data's cube is
    (its centre within a voxel) with the same lungs (Dice > 0.97: the native grid is already
    a 2 x 2 average, not the original)."""
    native = dataio.load_case(DATA / "lctsc_native" / "patient_004")
    ref = dataio.load_case(DATA / "lctsc64" / "patient_004")
    ct, lung, affine = lctsc.course_layout(native.ct_hu, native.mask, native.affine)
    assert np.abs(affine[:3, 3] - ref.affine[:3, 3]).max() <= 5.0
    np.testing.assert_allclose(affine[:3, :3], ref.affine[:3, :3])
    shift = np.round(np.linalg.inv(ref.affine) @ affine[:, 3])[:3].astype(int)
    moved = np.roll(lung, tuple(shift), axis=(0, 1, 2))
    assert _dice(moved > 0, ref.mask > 0) > 0.97


class Recorded:
    """A fake TCIA: recorded getSeries answers, ZIPs built here; it can fail on cue."""

    def __init__(self, zips: dict, fail: dict | None = None):
        self.zips, self.fail, self.calls = zips, dict(fail or {}), []

    def __call__(self, url: str) -> bytes:
        self.calls.append(url)
        for key, error in list(self.fail.items()):
            if key in url:
                del self.fail[key]                      # fail once
                raise error
        if "getSeries" in url:
            modality = url.split("Modality=")[1]
            return (RECORDED / f"lctsc_getSeries_{modality}.json").read_bytes()
        uid = url.split("SeriesInstanceUID=")[1]
        return self.zips[uid]


def _zip(files) -> bytes:
    buf = bytes_io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in files:
            z.write(f, arcname=Path(f).name)
    return buf.getvalue()


@pytest.fixture(scope="module")
def tcia(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tcia")
    files, _, _ = _series(tmp / "ct")
    rt = _rtstruct(tmp / "rt.dcm", files)
    ct_zip, rt_zip = _zip(files), _zip([rt])
    uids = {"1.3.6.1.4.1.14519.5.2.1.7014.4598.1001": ct_zip,
            "1.3.6.1.4.1.14519.5.2.1.7014.4598.1002": ct_zip,
            "1.3.6.1.4.1.14519.5.2.1.7014.4598.3001": rt_zip,
            "1.3.6.1.4.1.14519.5.2.1.7014.4598.3002": rt_zip}
    return uids


def test_download_lists_pairs_and_resumes_after_a_kill(tmp_path, tcia):
    fetch = Recorded(tcia, fail={"4598.1002": KeyboardInterrupt()})   # killed mid-way
    with pytest.raises(KeyboardInterrupt):
        lctsc.fetch_lctsc(tmp_path, fetch=fetch, progress=False)
    assert fetch.calls[:2] == [lctsc.series_url("CT"), lctsc.series_url("RTSTRUCT")]
    manifest = dataio.load_json(tmp_path / "manifest.json")
    assert list(manifest["cases"]) == ["lctsc_test_s1_101"]          # the first case is whole
    assert not list((tmp_path / "lctsc64").glob(".tmp_*"))
    again = Recorded(tcia)
    manifest = lctsc.fetch_lctsc(tmp_path, fetch=again, progress=False)
    assert sorted(manifest["cases"]) == ["lctsc_test_s1_101", "lctsc_train_s2_002"]
    fetched = [u for u in again.calls if "getImage" in u]
    assert all("4598.1001" not in u and "4598.3001" not in u for u in fetched)  # not again
    for case in manifest["cases"].values():
        for rel, sha in case["files"].items():
            assert dataio.file_sha256(tmp_path / rel) == sha
        for z in case["zips"].values():
            assert dataio.file_sha256(tmp_path / z["file"]) == z["sha256"]
    third = Recorded(tcia)
    lctsc.fetch_lctsc(tmp_path, fetch=third, progress=False)
    assert [u for u in third.calls if "getImage" in u] == []          # all done: nothing fetched


def test_transport_retries_server_errors_and_names_the_rest(monkeypatch, tmp_path):
    answers = [urllib.error.HTTPError("u", 503, "Service Unavailable", None, None),
               urllib.error.URLError("timed out"), b"[]"]
    slept = []

    class Response(bytes_io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    def urlopen(url, timeout):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return Response(answer)

    monkeypatch.setattr(lctsc.urllib.request, "urlopen", urlopen)
    assert lctsc.http_fetch("https://x/getSeries", sleep=slept.append) == b"[]"
    assert slept == [lctsc.BACKOFF_S, 2 * lctsc.BACKOFF_S]
    answers[:] = [urllib.error.HTTPError("u", 404, "Not Found", None, None)]
    with pytest.raises(LungsegInputError, match="HTTP 404") as err:
        lctsc.http_fetch("https://x/getImage?SeriesInstanceUID=9", sleep=slept.append)
    assert "getImage" in str(err.value) and len(slept) == 2           # no retry on a 404
    with pytest.raises(LungsegInputError, match="not a ZIP"):
        lctsc.download_series("9", tmp_path / "x.zip", fetch=lambda url: b"<html>busy</html>")
    assert not list(tmp_path.iterdir())                 # no temporary file, no zip left behind
