"""DICOM exports as scanners and PACS write them, beyond the plain single-slice series.

A small synthetic CT (a body with two air-filled lungs and some noise, integer HU) is
written by ``dicom.write_ct_series`` and then changed the way real exports differ: slices
3 mm then 4 mm apart, files without the 128-byte preamble, a soft-tissue and a lung
reconstruction of the same size side by side, compressed pixel data (RLE, JPEG-LS,
JPEG 2000 with pydicom's encoders, JPEG Lossless SV1 with the small encoder below), and
multi-frame Enhanced / Legacy Converted Enhanced CT. Each is read back to the same HU and
geometry as the plain series, or refused in one line that says what to do.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.uid import generate_uid

from lungseg_utils.errors import LungsegInputError
from lungseg_utils.geometry import lps_affine
from lungseg_utils.scan import dicom, reader, segment

ROOT = Path(__file__).resolve().parents[1]
SHAPE, SPACING = (40, 36, 12), (0.8, 0.9, 2.5)      # 36 rows: JPEG 2000 needs at least 32


def _phantom() -> tuple[np.ndarray, np.ndarray]:
    """Integer HU (X, Y, Z) float32 and an L, P, S affine."""
    x, y, z = np.indices(SHAPE)
    ct = np.full(SHAPE, -1000.0, np.float32)
    ct[((x - 20) / 18) ** 2 + ((y - 18) / 15) ** 2 <= 1] = 40.0
    for cx in (12, 28):
        ct[((x - cx) / 6) ** 2 + ((y - 18) / 9) ** 2 + ((z - 6) / 5) ** 2 <= 1] = -850.0
    ct += np.random.default_rng(0).integers(-40, 41, SHAPE)
    return ct, lps_affine(SHAPE, SPACING, (5.0, -12.0, -300.0))


@pytest.fixture()
def series(tmp_path):
    """(folder, files, ct, affine) of the plain single-slice series."""
    ct, affine = _phantom()
    files = dicom.write_ct_series(ct, affine, tmp_path / "series")
    return tmp_path / "series", files, ct, affine


def _edit(path, **values):
    ds = pydicom.dcmread(path)
    for key, value in values.items():
        setattr(ds, key, value)
    ds.save_as(path)


def _one_line(err, *words):
    text = str(err.value)
    assert "\n" not in text, text
    for word in words:
        assert str(word) in text, (word, text)
    return text


# 1. uneven slice spacing -----------------------------------------------------------------

def test_uneven_slice_spacing_is_refused_naming_the_spacings(series):
    """3 mm then 4 mm between slices: stacking them on one even grid would misplace every
    slice; the series is refused, naming the folder, both spacings and what to do."""
    folder, files, _, _ = series
    for k, f in enumerate(files):
        z = -300.0 + 3.0 * k + max(0, k - 6)             # steps 3 mm ... then 4 mm
        pos = pydicom.dcmread(f).ImagePositionPatient
        _edit(f, ImagePositionPatient=[pos[0], pos[1], z])
    with pytest.raises(LungsegInputError, match="uneven slice spacing") as err:
        reader.load_scan(folder)
    _one_line(err, folder, "3.00", "4.00", "dcm2niix")


@pytest.mark.parametrize("jitter", ["0.005 mm", "0.4 %"])
def test_small_jitter_of_slice_positions_is_one_regular_grid(series, jitter):
    """Positions rounded as scanners print them (a few micrometres, or under 1 % of the
    step) still make one regular grid, with the series' own affine."""
    folder, files, ct, _ = series
    rng = np.random.default_rng(1)
    size = 0.005 if jitter == "0.005 mm" else 0.004 * SPACING[2]
    for f in files[1:-1]:
        pos = [float(v) for v in pydicom.dcmread(f).ImagePositionPatient]
        _edit(f, ImagePositionPatient=[pos[0], pos[1], pos[2] + rng.uniform(-size, size)])
    got, affine, _, info = reader.load_scan(folder)
    plain = dicom.write_ct_series(ct, _phantom()[1], folder.parent / "plain")
    want, want_affine, _, _ = reader.load_scan(plain[0].parent)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(affine, want_affine, atol=1e-9)
    assert info["n_slices"] == SHAPE[2]


# 2. files without the preamble -----------------------------------------------------------

def _without_preamble(path: Path, meta: bool) -> None:
    """Rewrite ``path`` without the 128-byte preamble and 'DICM': with its file meta group
    (the bytes after them), or as a bare implicit-VR dataset without file meta."""
    if meta:
        path.write_bytes(path.read_bytes()[132:])
        return
    ds = pydicom.dcmread(path)
    del ds.file_meta
    ds.preamble = None
    pydicom.dcmwrite(path, ds, enforce_file_format=False, implicit_vr=True, little_endian=True)


@pytest.mark.parametrize("which", ["all", "last three"])
@pytest.mark.parametrize("meta", [True, False], ids=["file meta", "bare dataset"])
def test_files_without_the_preamble_are_read_not_dropped(series, which, meta):
    """A folder of files without the preamble was 'no DICOM files'; when only some lacked it,
    those slices were dropped without a word. Both now read as the whole series."""
    folder, files, ct, affine = series
    want, want_affine, _, _ = reader.load_scan(folder)
    for f in files if which == "all" else files[-3:]:
        _without_preamble(f, meta)
        assert pydicom.dcmread(f, force=True).SOPClassUID == dicom.CT_IMAGE_STORAGE
    (folder / "notes.txt").write_text("not DICOM")
    (folder / "random.bin").write_bytes(b"\x08\x00" + bytes(range(256)) * 4)  # DICOM-ish start
    assert dicom.dicom_files(folder) == sorted(files)
    assert segment._is_dicom_scan(folder.parent)
    got, got_affine, _, info = reader.load_scan(folder)
    assert info["n_slices"] == SHAPE[2]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got_affine, want_affine, atol=1e-9)


# 3. several CT series of the same size ---------------------------------------------------

def _write_series(folder, ct, affine, description, kernel, number, spacing_z=None):
    if spacing_z is not None:
        affine = affine.copy()
        affine[:3, 2] *= spacing_z / np.linalg.norm(affine[:3, 2])
    files = dicom.write_ct_series(ct, affine, folder)
    for f in files:
        _edit(f, SeriesDescription=description, ConvolutionKernel=kernel, SeriesNumber=number)
    return str(pydicom.dcmread(files[0]).SeriesInstanceUID)


@pytest.mark.parametrize("names", [("a", "b"), ("b", "a")])
def test_of_two_reconstructions_the_lung_one_is_read_and_said(tmp_path, names):
    """A soft-tissue and a lung reconstruction, same slices and spacing: the lung one is read
    whatever the folders are called (file order picked the first before)."""
    ct, affine = _phantom()
    soft = _write_series(tmp_path / "export" / f"{names[0]}_1", ct, affine, "Abdomen 2.5 B30f",
                         "B30f", 2)
    lung = _write_series(tmp_path / "export" / f"{names[1]}_2", ct + 7, affine, "Lung 2.5",
                         "B70f", 3)
    got, _, _, info = reader.load_scan(tmp_path / "export")
    assert info["series_uid"] == lung and info["other_series"] == [soft]
    np.testing.assert_array_equal(got, reader.load_scan(tmp_path / "export", soft)[0] + 7)
    line = dicom.series_choice_line(info)
    assert line.startswith(f"{tmp_path / 'export'}: read CT series {lung} (") and "\n" not in line
    assert soft in line and "--series UID" in line and "'Lung 2.5'" in line


def test_series_are_ranked_by_slices_then_thinness_then_lung(tmp_path):
    ct, affine = _phantom()
    uids = {"lung 2.5 mm": _write_series(tmp_path / "s1", ct, affine, "Lung", "B70f", 3),
            "soft 2.0 mm": _write_series(tmp_path / "s2", ct, affine, "Soft", "B30f", 2, 2.0),
            "soft 2.5 mm": _write_series(tmp_path / "s3", ct, affine, "Soft", "B30f", 4)}
    ranked = [d["series_uid"] for d in dicom.rank_series(dicom.find_ct_series(tmp_path))]
    assert ranked == [uids["soft 2.0 mm"], uids["lung 2.5 mm"], uids["soft 2.5 mm"]]
    more = _write_series(tmp_path / "s4", np.concatenate([ct, ct[:, :, :2]], axis=2), affine,
                         "Soft", "B30f", 9)
    assert dicom.rank_series(dicom.find_ct_series(tmp_path))[0]["series_uid"] == more


def test_command_prints_the_series_it_read_and_how_to_pick_another(tmp_path, monkeypatch,
                                                                  capsys):
    """The segment command says on its own stdout line which series it read; ``--series``
    reads another. (The model is replaced by a stub that stops after reading.)"""
    ct, affine = _phantom()
    soft = _write_series(tmp_path / "export" / "a", ct, affine, "Soft", "B30f", 2)
    lung = _write_series(tmp_path / "export" / "b", ct, affine, "Lung", "B70f", 3)

    def stop(forward, ct_hu, *args, **kwargs):
        raise LungsegInputError(f"stub model: read {ct_hu.shape}")

    monkeypatch.setattr(segment, "forward_for", lambda *args: (None, "stub"))
    monkeypatch.setattr(segment, "_model_info", lambda path: {})
    monkeypatch.setattr(segment, "predict_volume", stop)
    for series_uid, read, other in ((None, lung, soft), (soft, soft, lung)):
        argv = ["--input", str(tmp_path / "export"), "--output_mask", str(tmp_path / "m.nii.gz")]
        assert segment.main(argv + (["--series", series_uid] if series_uid else [])) == 2
        out = capsys.readouterr()
        lines = [l for l in out.out.splitlines() if "read CT series" in l]
        assert len(lines) == 1 and f"read CT series {read} (" in lines[0], out.out
        assert other in lines[0] and "pass --series UID" in lines[0]
        assert "stub model" in out.err


# 4. compressed pixel data ----------------------------------------------------------------

def encode_jpeg_lossless_sv1(image: np.ndarray) -> bytes:
    """A JPEG Lossless codestream (process 14, selection value 1: predict from the left) of a
    16-bit image, for the test only: pydicom has no encoder for this syntax. One Huffman
    table gives each difference category 0..16 a 5-bit code (ITU T.81, annex H)."""
    rows, cols = image.shape
    px = image.astype(np.uint16).astype(np.int64)
    pred = np.empty_like(px)
    pred[0, 0] = 1 << 15
    pred[0, 1:] = px[0, :-1]                      # first line: the sample to the left
    pred[1:, 0] = px[:-1, 0]                      # first column: the sample above
    pred[1:, 1:] = px[1:, :-1]                    # selection value 1: the sample to the left
    diff = (px - pred) % 65536
    diff = np.where(diff >= 32768, diff - 65536, diff).ravel()
    bits = []
    for d in diff.tolist():
        size = abs(d).bit_length()
        bits.append(format(size, "05b"))
        if 0 < size < 16:
            bits.append(format(d if d > 0 else d + (1 << size) - 1, f"0{size}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    data = bytearray()
    for i in range(0, len(stream), 8):
        data.append(int(stream[i:i + 8], 2))
        if data[-1] == 0xFF:
            data.append(0)                        # byte stuffing
    dht = b"\xff\xc4" + (36).to_bytes(2, "big") + b"\x00" + bytes([0, 0, 0, 0, 17] + [0] * 11) \
        + bytes(range(17))
    sof = b"\xff\xc3" + (11).to_bytes(2, "big") + bytes([16]) + rows.to_bytes(2, "big") \
        + cols.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    sos = b"\xff\xda" + (8).to_bytes(2, "big") + bytes([1, 1, 0x00, 1, 0, 0])
    return b"\xff\xd8" + dht + sof + sos + bytes(data) + b"\xff\xd9"


def _compress(files, syntax) -> None:
    for f in files:
        ds = pydicom.dcmread(f)
        if syntax == uid.JPEGLosslessSV1:
            ds.PixelData = pydicom.encaps.encapsulate([encode_jpeg_lossless_sv1(ds.pixel_array)])
            ds.file_meta.TransferSyntaxUID = syntax
        else:
            ds.compress(syntax)
        ds.save_as(f, enforce_file_format=True)


SYNTAXES = [uid.RLELossless, uid.JPEGLosslessSV1, uid.JPEGLSLossless, uid.JPEG2000Lossless]


@pytest.mark.parametrize("unsigned", [False, True], ids=["int16", "uint16"])
@pytest.mark.parametrize("syntax", SYNTAXES, ids=[s.keyword for s in SYNTAXES])
def test_compressed_series_read_to_the_same_hu(tmp_path, syntax, unsigned):
    if syntax != uid.JPEGLosslessSV1:
        from pydicom.pixels import get_encoder

        encoder = get_encoder(syntax)
        if not encoder.is_available:
            pytest.skip(f"no pydicom encoder for {syntax.name}: {encoder.missing_dependencies}")
    ct, affine = _phantom()
    want, want_affine, _, _ = dicom.load_dicom_ct(
        dicom.write_ct_series(ct, affine, tmp_path / "plain", unsigned=unsigned)[0].parent)
    files = dicom.write_ct_series(ct, affine, tmp_path / "packed", unsigned=unsigned)
    _compress(files, syntax)
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == syntax
    got, got_affine, _, _ = dicom.load_dicom_ct(tmp_path / "packed")
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got_affine, want_affine, atol=1e-9)


def test_a_missing_decoder_is_one_short_line_naming_what_to_install(series, monkeypatch):
    from pydicom.pixels import get_decoder

    folder, files, _, _ = series
    _compress(files, uid.JPEGLosslessSV1)
    monkeypatch.setattr(get_decoder(uid.JPEGLosslessSV1), "_available", {})  # as if not installed
    with pytest.raises(LungsegInputError) as err:
        reader.load_scan(folder)
    text = _one_line(err, files[0], "JPEGLosslessSV1", "cannot be decoded",
                     "pip install pylibjpeg pylibjpeg-libjpeg")
    assert len(text) - len(str(files[0])) < 140, text


def test_the_decoders_are_dependencies():
    """pyproject.toml names every package the refusal above asks for."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in deps}
    wanted = {p for v in dicom.DECODER_PACKAGES.values() for p in v.split()}
    assert wanted == {"pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg"}
    assert wanted <= names


# 5. multi-frame CT -----------------------------------------------------------------------

def _enhanced_ct(files, path: Path, *, per_frame_geometry: bool = True) -> Path:
    """An Enhanced CT image (one file, all frames, in shuffled order) built with pydicom from
    the single-slice files: orientation and pixel measures shared, position and rescale per
    frame (every other frame stored with another intercept)."""
    from pydicom.dataset import Dataset, FileMetaDataset

    slices = [pydicom.dcmread(f) for f in files]
    order = np.random.default_rng(2).permutation(len(slices))
    first = slices[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = dicom.ENHANCED_CT_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SOPClassUID, ds.Modality = dicom.ENHANCED_CT_IMAGE_STORAGE, "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    for key in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID"):
        setattr(ds, key, first.get(key))
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = generate_uid(), 7, 1
    ds.Rows, ds.Columns, ds.NumberOfFrames = first.Rows, first.Columns, len(slices)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    shared = Dataset()
    orientation, measures = Dataset(), Dataset()
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    measures.PixelSpacing, measures.SliceThickness = first.PixelSpacing, first.SliceThickness
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = [orientation], [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames, groups = [], []
    for n, k in enumerate(order):
        item, position, value = Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = slices[k].ImagePositionPatient
        intercept = -1024.0 if n % 2 else -1000.0
        value.RescaleIntercept, value.RescaleSlope, value.RescaleType = intercept, 1.0, "HU"
        item.PixelValueTransformationSequence = [value]
        if per_frame_geometry:
            item.PlanePositionSequence = [position]
        groups.append(item)
        hu = slices[k].pixel_array.astype(np.int32) + int(slices[k].RescaleIntercept)
        frames.append((hu - int(intercept)).astype(np.int16))
    ds.PerFrameFunctionalGroupsSequence = groups
    ds.PixelData = np.stack(frames).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("kind", ["Enhanced CT", "Legacy Converted Enhanced CT"])
def test_multi_frame_ct_reads_like_the_single_slice_series(series, tmp_path, kind):
    """One multi-frame file holding the series (frames in any order, rescale per frame):
    the same HU on the same grid as the single-slice files it was made from."""
    folder, files, _, _ = series
    want, want_affine, _, _ = reader.load_scan(folder)
    out = tmp_path / "multi"
    out.mkdir()
    if kind == "Enhanced CT":
        _enhanced_ct(files, out / "enhanced.dcm")
    else:
        hd = pytest.importorskip("highdicom")
        image = hd.legacy.LegacyConvertedEnhancedCTImage(
            [pydicom.dcmread(f) for f in files], series_instance_uid=generate_uid(),
            series_number=8, sop_instance_uid=generate_uid(), instance_number=1)
        assert image.SOPClassUID == dicom.LEGACY_ENHANCED_CT_IMAGE_STORAGE
        image.save_as(out / "legacy.dcm", enforce_file_format=True)
    got, got_affine, _, info = reader.load_scan(out)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got_affine, want_affine, atol=1e-9)
    assert info["n_slices"] == SHAPE[2] and sorted(info["frames"]) == list(range(SHAPE[2]))


def test_multi_frame_ct_without_frame_positions_is_named_in_the_refusal(series, tmp_path):
    folder, files, _, _ = series
    (tmp_path / "multi").mkdir()
    path = _enhanced_ct(files, tmp_path / "multi" / "enhanced.dcm", per_frame_geometry=False)
    with pytest.raises(LungsegInputError, match="multi-frame Enhanced CT") as err:
        reader.load_scan(tmp_path / "multi")
    _one_line(err, path, "ImagePositionPatient", "dcm2niix")


@pytest.mark.parametrize("meta", [True, False], ids=["file meta", "bare dataset"])
def test_a_seg_references_source_files_without_the_preamble(series, tmp_path, meta):
    """The SEG writer reads its source images as the reader does (force=True): a series
    without the preamble gets its DICOM SEG too, referencing every image."""
    from lungseg_utils.scan.dicom_seg import write_seg

    folder, files, ct, affine = series
    for f in files:
        _without_preamble(f, meta)
    got, got_affine, _, info = reader.load_scan(folder)
    mask = (got < -500).astype(np.uint8)
    out = write_seg(mask, got_affine, info["files"], tmp_path / "seg.dcm")
    seg = pydicom.dcmread(out)
    refs = {r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence
            for r in s.ReferencedInstanceSequence}
    assert refs == {pydicom.dcmread(f, force=True).SOPInstanceUID for f in files}
