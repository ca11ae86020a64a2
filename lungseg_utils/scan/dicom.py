"""Read a CT series from a folder of DICOM files into the project's (ct_hu, affine) form.

What a scanner or PACS export gives is a folder (often nested) of single-slice files (with
or without the 128-byte preamble) or multi-frame Enhanced CT files, maybe several series
(localizers, a dose report, a second reconstruction). :func:`load_dicom_ct` finds the CT
image series, picks one (:func:`rank_series`, or ``series_uid``), sorts its slices along
the slice normal, decodes compressed pixel data (pylibjpeg), applies RescaleSlope and
RescaleIntercept to get Hounsfield units, and builds the voxel-to-world affine from
ImagePositionPatient, ImageOrientationPatient and PixelSpacing, converted from DICOM's LPS
to NIfTI's RAS. The result is what :func:`lungseg_utils.scan.reader.load_ct` returns for a NIfTI
file, so everything downstream (model grid, inference, metrics) is unchanged.

What cannot be stacked into one regular volume is refused with one line naming the folder
and the problem (mixed orientation or size, missing or duplicate slices, uneven spacing,
gantry tilt, pixel data that cannot be decoded). :func:`write_ct_series` does the inverse,
for tests and to hand a NIfTI scan to a DICOM viewer.

Conventions: array axes (X, Y, Z) = (column, row, slice) of the DICOM images, so that the
first axis follows the row direction as in ``dcm2niix`` and nibabel's ``nicom``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import LungsegInputError

#: DICOM's patient coordinates (L, P, S mm) -> NIfTI's world (R, A, S mm), and back (its own
#: inverse); homogeneous 4 x 4 (``LPS_TO_RAS[:3, :3]`` for points).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.2"
MULTIFRAME_CT = {ENHANCED_CT_IMAGE_STORAGE: "Enhanced CT",
                 LEGACY_ENHANCED_CT_IMAGE_STORAGE: "Legacy Converted Enhanced CT"}
MAX_GAP_RATIO = 1.5         # a step this many times the usual one means missing slices
MAX_TILT_DEG = 0.5          # slice positions this far off the normal: gantry tilt
#: Slice steps may differ from their mean by this much (mm, or this fraction of the step,
#: whichever is larger) and still be one regular grid: rounding of the positions' text.
SPACING_JITTER_MM, SPACING_JITTER_FRACTION = 0.01, 0.01
#: What to install to decode each compressed transfer syntax (pydicom's pixel data plugins).
DECODER_PACKAGES = {
    **dict.fromkeys(["JPEGBaseline8Bit", "JPEGExtended12Bit", "JPEGLossless", "JPEGLosslessSV1",
                     "JPEGLSLossless", "JPEGLSNearLossless"], "pylibjpeg pylibjpeg-libjpeg"),
    **dict.fromkeys(["JPEG2000Lossless", "JPEG2000", "HTJ2KLossless", "HTJ2KLosslessRPCL",
                     "HTJ2K"], "pylibjpeg pylibjpeg-openjpeg"),
}


def _pydicom():
    try:
        import pydicom
    except ImportError:  # pragma: no cover - pydicom is a dependency
        raise LungsegInputError("reading DICOM needs pydicom: pip install pydicom") from None
    return pydicom


def is_dicom_file(path) -> bool:
    """True if ``path`` is a DICOM file: ``DICM`` at byte 128, or (written without the
    preamble) a file that starts with a DICOM tag and parses with a SOP Class UID."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    if head[128:132] == b"DICM":
        return True
    if head[:2] not in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08"):
        return False                    # a bare dataset starts with group 0002 or 0008
    try:
        ds = _pydicom().dcmread(path, force=True, stop_before_pixels=True,
                                specific_tags=["SOPClassUID"])
    except Exception:  # noqa: BLE001 - whatever fails to parse is not DICOM
        return False
    meta = getattr(ds, "file_meta", None) or {}
    return bool(ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID"))


def dicom_files(folder) -> list[Path]:
    """Every DICOM file below ``folder`` (any depth, any or no extension, with or without
    the preamble), sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and is_dicom_file(p))


def _dcmread(path: Path, pixels: bool = False):
    """The file's dataset (without its pixel data unless ``pixels``), preamble or not."""
    try:
        return _pydicom().dcmread(path, force=True, stop_before_pixels=not pixels)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
        raise LungsegInputError(f"{path}: not a readable DICOM file "
                                f"({' '.join(str(exc).split())}).") from None


@dataclass
class Slice:
    """One image plane of a series: a single-frame file, or one frame of a multi-frame file.

    ``position`` (ImagePositionPatient) and ``orientation`` (ImageOrientationPatient) are
    LPS mm; ``pixel_spacing`` = (between rows, between columns) mm as in PixelSpacing.
    """

    path: Path
    frame: int | None           # index into the file's frames (None: a single-frame file)
    header: object              # the file's pydicom Dataset, without pixel data
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple
    size: tuple                 # (rows, columns)
    rescale: tuple              # (slope, intercept)
    frame_of_reference: str


def _numbers(values, count: int, where, what: str) -> np.ndarray:
    try:
        out = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        out = np.array([])
    if out.shape != (count,) or not np.isfinite(out).all():
        raise LungsegInputError(f"{where}: {what} is not {count} numbers.")
    return out


def _planes(path: Path, ds) -> list[Slice]:
    """The image planes of one CT file: the file itself, or the frames of an Enhanced or
    Legacy Converted Enhanced CT image read from its per-frame and shared functional groups
    (plane position and orientation, pixel measures, pixel value transformation)."""
    kind = MULTIFRAME_CT.get(str(ds.SOPClassUID))
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0] if kind else None
    items = (ds.get("PerFrameFunctionalGroupsSequence") or []) if kind else [None]
    if len(items) != int(ds.get("NumberOfFrames", 1) or 1):
        raise LungsegInputError(f"{path}: multi-frame {kind or 'CT'} image without per-frame "
                                "functional groups is not supported yet; convert it with dcm2niix.")

    def get(item, sequence: str, keyword: str):
        for source in (item, shared):           # the frame's groups, the shared ones, the file
            seq = source.get(sequence) if source is not None else None
            if seq and keyword in seq[0]:
                return seq[0].get(keyword)
        return ds.get(keyword)

    planes = []
    for i, item in enumerate(items):
        where = f"{path} (frame {i + 1})" if kind else path
        values = {k: get(item, seq, k) for seq, k in (
            ("PlanePositionSequence", "ImagePositionPatient"),
            ("PlaneOrientationSequence", "ImageOrientationPatient"),
            ("PixelMeasuresSequence", "PixelSpacing"))}
        if kind and None in values.values():
            missing = ", ".join(k for k, v in values.items() if v is None)
            raise LungsegInputError(f"{path}: multi-frame {kind} image whose frame {i + 1} has "
                                    f"no {missing}; convert it with dcm2niix.")
        slope = get(item, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = get(item, "PixelValueTransformationSequence", "RescaleIntercept")
        planes.append(Slice(
            path, i if kind else None, ds,
            _numbers(values["ImagePositionPatient"], 3, where, "ImagePositionPatient"),
            _numbers(values["ImageOrientationPatient"], 6, where, "ImageOrientationPatient"),
            tuple(_numbers(values["PixelSpacing"], 2, where, "PixelSpacing")),
            (int(ds.Rows), int(ds.Columns)),
            (float(1.0 if slope in (None, "") else slope),
             float(0.0 if intercept in (None, "") else intercept)),
            str(ds.get("FrameOfReferenceUID", ""))))
    return planes


def find_ct_series(folder) -> dict[str, list[Slice]]:
    """Group the CT image planes below ``folder`` by SeriesInstanceUID.

    Returns ``{series_uid: [Slice, ...]}``: single-frame CT images, and the frames of
    multi-frame (Enhanced, Legacy Converted Enhanced) CT images. Localizers (scout
    views), secondary captures, dose reports and other modalities are left out. Raises
    LungsegInputError if there is no DICOM file or no CT image series.
    """
    folder = Path(folder)
    files = dicom_files(folder)
    if not files:
        raise LungsegInputError(f"{folder}: folder holds no ct.nii.gz and no DICOM files.")
    series: dict[str, list[Slice]] = {}
    for path in files:
        ds = _dcmread(path)
        sop = str(ds.get("SOPClassUID", ""))
        image_type = [str(v).upper() for v in ds.get("ImageType", [])]
        if (ds.get("Modality") != "CT" or sop not in (CT_IMAGE_STORAGE, *MULTIFRAME_CT)
                or "LOCALIZER" in image_type or "SeriesInstanceUID" not in ds):
            continue
        if sop in MULTIFRAME_CT or ("ImagePositionPatient" in ds
                                    and "ImageOrientationPatient" in ds):
            series.setdefault(str(ds.SeriesInstanceUID), []).extend(_planes(path, ds))
    if not series:
        raise LungsegInputError(f"{folder}: {len(files)} DICOM file(s) but no CT image series "
                                "(only localizers, reports or other modalities).")
    return series


def _slice_steps(slices: list[Slice]) -> tuple[np.ndarray, list[Slice], np.ndarray, np.ndarray]:
    """(slice normal, slices sorted along it, their positions (n, 3), the steps between them)."""
    normal = np.cross(slices[0].orientation[:3], slices[0].orientation[3:])
    positions = np.array([s.position for s in slices])
    order = np.argsort(positions @ normal, kind="stable")
    positions = positions[order]
    return normal, [slices[i] for i in order], positions, np.diff(positions @ normal)


def _stack_geometry(folder: Path, slices: list[Slice]) -> tuple[list[Slice], np.ndarray]:
    """Sort ``slices`` along their normal and return (sorted slices, RAS affine (4, 4))."""
    iops = np.array([s.orientation for s in slices])
    if np.abs(iops - iops[0]).max() > 1e-4:
        raise LungsegInputError(f"{folder}: the series mixes slice orientations.")
    frames = {s.frame_of_reference for s in slices}
    if len(frames) > 1:
        raise LungsegInputError(f"{folder}: the series spans {len(frames)} frames of reference; "
                                "its slices do not share one patient coordinate system.")
    sizes = {s.size for s in slices}
    spacings = {tuple(round(v, 4) for v in s.pixel_spacing) for s in slices}
    if len(sizes) > 1 or len(spacings) > 1:
        raise LungsegInputError(f"{folder}: the series mixes image sizes or pixel spacings.")
    if len(slices) < 2:
        raise LungsegInputError(f"{folder}: the CT series has only one slice; a 3D scan "
                                "needs several.")
    normal, slices, positions, steps = _slice_steps(slices)
    if steps.min() < 1e-3:
        raise LungsegInputError(f"{folder}: two slices share a position (several acquisitions "
                                "in one series?); pass --series to pick one.")
    if steps.max() > MAX_GAP_RATIO * np.median(steps):
        raise LungsegInputError(f"{folder}: slices are missing (gap of {steps.max():.2f} mm "
                                f"where slices are {np.median(steps):.2f} mm apart).")
    mean_step = (positions[-1] - positions[0]) @ normal / (len(slices) - 1)
    if np.abs(steps - mean_step).max() > max(SPACING_JITTER_MM, SPACING_JITTER_FRACTION * mean_step):
        found = sorted({f"{s:.2f}" for s in steps}, key=float)
        found = found if len(found) <= 6 else [*found[:3], "...", *found[-2:]]
        raise LungsegInputError(f"{folder}: uneven slice spacing (slices {', '.join(found)} mm "
                                "apart); resample it to a regular grid first (e.g. dcm2niix, "
                                "whose NIfTI this command reads).")
    step = (positions[-1] - positions[0]) / (len(slices) - 1)
    tilt = np.degrees(np.arccos(min(1.0, abs(step @ normal) / np.linalg.norm(step))))
    if tilt > MAX_TILT_DEG:
        raise LungsegInputError(f"{folder}: gantry tilt of {tilt:.1f} degrees; resample the "
                                "series to a regular grid first (e.g. dcm2niix).")
    row_dir, col_dir = slices[0].orientation[:3], slices[0].orientation[3:]
    row_mm, col_mm = slices[0].pixel_spacing             # between rows, between columns
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row_dir * col_mm, col_dir * row_mm, step
    lps[:3, 3] = positions[0]
    return slices, LPS_TO_RAS @ lps


def _describe(uid: str, slices: list[Slice]) -> dict:
    """What the choice between series looks at, and what the summary says about a series."""
    first = slices[0].header
    steps = _slice_steps(slices)[3] if len(slices) > 1 else np.array([])
    try:
        number = int(first.get("SeriesNumber"))
    except (TypeError, ValueError):
        number = None
    kernel = first.get("ConvolutionKernel") or ""
    kernel = kernel if isinstance(kernel, str) else "\\".join(map(str, kernel))
    return {"series_uid": uid, "n_slices": len(slices),
            "slice_spacing_mm": round(float(np.median(steps)), 3) if steps.size else None,
            "series_number": number,
            "description": str(first.get("SeriesDescription", "")), "kernel": kernel}


def rank_series(series: dict[str, list[Slice]]) -> list[dict]:
    """The CT series of :func:`find_ct_series`, best first (:func:`_describe` of each).

    Best is the series with most slices; among as many, the thinnest (smallest step between
    slices), then a lung reconstruction ('lung' in its description or kernel), then the
    lowest SeriesNumber, then the UID: the same folder gives the same choice, whatever its
    files are called.
    """
    def key(d):
        lung = "lung" in f"{d['description']} {d['kernel']}".lower()
        spacing = d["slice_spacing_mm"]
        return (-d["n_slices"], round(spacing, 2) if spacing else np.inf, not lung,
                d["series_number"] if d["series_number"] is not None else np.inf, d["series_uid"])

    return sorted((_describe(uid, slices) for uid, slices in series.items()), key=key)


def series_choice_line(info: dict) -> str | None:
    """One line saying which of several CT series :func:`load_dicom_ct` read and how to pick
    another (``--series UID``); None if the folder held one CT series."""
    candidates = info.get("candidates") or []
    if len(candidates) < 2:
        return None

    def text(d):
        what = ", ".join(v for v in (f"{d['n_slices']} slices",
                                     f"{d['slice_spacing_mm']:g} mm" if d["slice_spacing_mm"] else "",
                                     repr(d["description"]) if d["description"] else "",
                                     d["kernel"]) if v)
        return f"{d['series_uid']} ({what})"

    chosen = next(d for d in candidates if d["series_uid"] == info["series_uid"])
    others = [text(d) for d in candidates if d is not chosen]
    return (f"{info['folder']}: read CT series {text(chosen)}; "
            f"{len(others)} other CT series: {'; '.join(others)}; pass --series UID to read "
            "another.")


def _decoding_error(path, ds, exc=None) -> LungsegInputError | None:
    """The one-line refusal for pixel data that cannot be decoded, naming the file, the
    transfer syntax and what to install; None if a decoder is at hand and ``exc`` is None."""
    from pydicom.pixels import get_decoder

    syntax = ds.file_meta.get("TransferSyntaxUID")
    label = f"{syntax.keyword or syntax.name} ({syntax})" if syntax else "no transfer syntax"
    if syntax is not None and syntax.is_compressed:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            return LungsegInputError(f"{path}: pixel data is {label}, which pydicom cannot "
                                     "decode; decompress the series first (e.g. dcmdjpeg, "
                                     "gdcmconv --raw).")
        if not decoder.is_available:
            install = DECODER_PACKAGES.get(syntax.keyword, "a pydicom pixel data plugin")
            return LungsegInputError(f"{path}: pixel data is {label} and cannot be decoded "
                                     f"without: pip install {install}")
    if exc is None:
        return None
    why = " ".join(str(exc).split())                    # pydicom's text spans lines
    return LungsegInputError(f"{path}: pixel data cannot be decoded ({label}): {why[:200]}")


def _read_pixels(path: Path):
    """The file's stored pixel values ((rows, columns) or (frames, rows, columns))."""
    ds = _dcmread(path, pixels=True)
    if "TransferSyntaxUID" not in ds.file_meta:       # a bare dataset, no file meta
        from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                          ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    error = _decoding_error(path, ds)
    if error is not None:
        raise error
    try:
        return ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - missing codec, truncated data, ...
        raise _decoding_error(path, ds, exc) from None


def load_dicom_ct(folder, series_uid: str | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                   nib.Nifti1Header, dict]:
    """Load one CT series from ``folder`` (searched recursively).

    Returns (ct_hu float32 (X, Y, Z), affine float64 (4, 4) RAS mm, a NIfTI header for the
    outputs, info dict: series_uid, n_slices, other_series (UIDs not chosen), candidates
    (every CT series found, best first: :func:`rank_series`), patient_id, study_date,
    series_description, files (the slices' files, in the array's slice order; a multi-frame
    file once per frame, with ``frames``, the frame indices)). ``series_uid`` picks a series;
    by default the best of :func:`rank_series` (most slices, then thinnest, then a lung
    reconstruction). Raises LungsegInputError naming the folder and the problem.
    """
    folder = Path(folder)
    series = find_ct_series(folder)
    candidates = rank_series(series)
    if series_uid is None:
        series_uid = candidates[0]["series_uid"]
    elif series_uid not in series:
        raise LungsegInputError(f"{folder}: no CT series {series_uid} (found: "
                                f"{', '.join(sorted(series))}).")
    slices, affine = _stack_geometry(folder, series[series_uid])
    planes, frames = [], {}
    for s in slices:                                 # a multi-frame file is decoded once
        if s.path not in frames:
            pixels = _read_pixels(s.path)
            frames[s.path] = pixels[None] if pixels.ndim == 2 else pixels
        pixels = (frames.pop(s.path) if s.frame is None else frames[s.path])[s.frame or 0]
        if pixels.shape != s.size:
            raise LungsegInputError(f"{s.path}: pixel data of shape {pixels.shape}, but the "
                                    f"header says {s.size[0]} rows x {s.size[1]} columns.")
        slope, intercept = s.rescale
        planes.append(pixels.astype(np.float32) * slope + intercept)
    ct_hu = np.ascontiguousarray(np.stack(planes, axis=-1).transpose(1, 0, 2), dtype=np.float32)
    header = nib.Nifti1Header()
    header.set_xyzt_units("mm")
    first = slices[0].header
    info = {"folder": str(folder), "series_uid": series_uid, "n_slices": len(slices),
            "other_series": sorted(uid for uid in series if uid != series_uid),
            "candidates": candidates,
            "patient_id": str(first.get("PatientID", "")),
            "study_date": str(first.get("StudyDate", "")),
            "series_description": str(first.get("SeriesDescription", "")),
            "files": [str(s.path) for s in slices]}
    if any(s.frame is not None for s in slices):
        info["frames"] = [s.frame for s in slices]
    return ct_hu, affine, header, info


def write_ct_series(ct_hu: np.ndarray, affine: np.ndarray, folder, *, series_uid=None,
                    study_uid=None, patient_id: str = "ANON", intercept: float = -1024.0,
                    unsigned: bool = False) -> list[Path]:
    """Write ``ct_hu`` (X, Y, Z) with RAS ``affine`` as a single-slice CT image series.

    Slices follow the array's third axis, which must be the one the slices stack along (the
    affine's third column); pixel values are int16 (``unsigned``: uint16, as many scanners
    store them, values below the intercept clipped) with ``RescaleIntercept = intercept``.
    Returns the written files (``folder/slice_0000.dcm`` ...). The inverse of
    :func:`load_dicom_ct` up to the int16 rounding of the HU values.
    """
    pydicom = _pydicom()
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lps = np.linalg.inv(LPS_TO_RAS) @ np.asarray(affine, dtype=np.float64)
    col_mm, row_mm = (float(np.linalg.norm(lps[:3, i])) for i in (0, 1))
    row_dir, col_dir = lps[:3, 0] / col_mm, lps[:3, 1] / row_mm
    series_uid, study_uid = series_uid or generate_uid(), study_uid or generate_uid()
    frame_uid = generate_uid()
    stored = np.round(np.asarray(ct_hu, dtype=np.float64) - intercept)
    stored = (np.clip(stored, 0, 65535).astype(np.uint16) if unsigned
              else np.clip(stored, -32768, 32767).astype(np.int16))
    paths = []
    for k in range(stored.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.ImageType = "CT", ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientID, ds.PatientName = patient_id, f"{patient_id}^"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID, ds.SeriesNumber, ds.InstanceNumber = frame_uid, 1, k + 1
        ds.ImagePositionPatient = [float(v) for v in (lps @ [0, 0, k, 1])[:3]]
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [row_mm, col_mm]
        ds.SliceThickness = float(np.linalg.norm(lps[:3, 2]))
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, int(not unsigned)
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = intercept, 1.0, "HU"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        path = folder / f"slice_{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
