"""Read a CT series from a folder of DICOM files into the project's (ct_hu, affine) form.

What a scanner or PACS export gives is a folder (often nested) of single-slice files, maybe
several series (localizers, a dose report, a second reconstruction). :func:`load_dicom_ct`
finds the CT image series, picks one (the one with most slices, or ``series_uid``), sorts
its slices along the slice normal, applies RescaleSlope/RescaleIntercept to get Hounsfield
units, and builds the voxel-to-world affine from ImagePositionPatient,
ImageOrientationPatient and PixelSpacing, converted from DICOM's LPS to NIfTI's RAS. The
result is what :func:`lungseg_utils.dataio.load_ct` returns for a NIfTI file, so everything
downstream (model grid, inference, metrics) is unchanged.

What cannot be stacked into one regular volume is refused with one line naming the folder
and the problem (mixed orientation or size, missing or duplicate slices, gantry tilt,
pixel data that cannot be decoded). :func:`write_ct_series` does the inverse, for tests and
to hand a NIfTI scan to a DICOM viewer.

Conventions: array axes (X, Y, Z) = (column, row, slice) of the DICOM images, so that the
first axis follows the row direction as in ``dcm2niix`` and nibabel's ``nicom``.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import LungsegInputError
from ..geometry import LPS_TO_RAS

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
MAX_GAP_RATIO = 1.5         # a step this many times the usual one means missing slices
MAX_TILT_DEG = 0.5          # slice positions this far off the normal: gantry tilt


def _pydicom():
    try:
        import pydicom
    except ImportError:  # pragma: no cover - pydicom is a dependency
        raise LungsegInputError("reading DICOM needs pydicom: pip install pydicom") from None
    return pydicom


def is_dicom_file(path) -> bool:
    """True if ``path`` is a file with the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(folder) -> list[Path]:
    """Every DICOM file below ``folder`` (any depth, any or no extension), sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and is_dicom_file(p))


def find_ct_series(folder) -> dict[str, list]:
    """Group the CT image slices below ``folder`` by SeriesInstanceUID.

    Returns ``{series_uid: [pydicom Dataset without pixel data, ...]}``. Localizers (scout
    views), secondary captures, dose reports and other modalities are left out. Raises
    LungsegInputError if there is no DICOM file or no CT image series.
    """
    pydicom = _pydicom()
    folder = Path(folder)
    files = dicom_files(folder)
    if not files:
        raise LungsegInputError(f"{folder}: folder holds no ct.nii.gz and no DICOM files.")
    series: dict[str, list] = {}
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
            raise LungsegInputError(f"{path}: not a readable DICOM file ({exc}).") from None
        if str(ds.get("SOPClassUID", "")) == ENHANCED_CT_IMAGE_STORAGE:
            raise LungsegInputError(f"{path}: enhanced (multi-frame) CT is not supported; "
                                    "export the series as single-slice CT images.")
        image_type = [str(v).upper() for v in ds.get("ImageType", [])]
        if (ds.get("Modality") != "CT" or str(ds.get("SOPClassUID", "")) != CT_IMAGE_STORAGE
                or "LOCALIZER" in image_type or "ImagePositionPatient" not in ds
                or "ImageOrientationPatient" not in ds):
            continue
        ds.filename = str(path)
        series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    if not series:
        raise LungsegInputError(f"{folder}: {len(files)} DICOM file(s) but no CT image series "
                                "(only localizers, reports or other modalities).")
    return series


def _stack_geometry(folder: Path, slices: list) -> tuple[list, np.ndarray]:
    """Sort ``slices`` along their normal and return (sorted slices, RAS affine (4, 4))."""
    iops = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in slices])
    if np.abs(iops - iops[0]).max() > 1e-4:
        raise LungsegInputError(f"{folder}: the series mixes slice orientations.")
    frames = {str(ds.get("FrameOfReferenceUID", "")) for ds in slices}
    if len(frames) > 1:
        raise LungsegInputError(f"{folder}: the series spans {len(frames)} frames of reference; "
                                "its slices do not share one patient coordinate system.")
    sizes = {(int(ds.Rows), int(ds.Columns)) for ds in slices}
    spacings = {tuple(round(float(v), 4) for v in ds.PixelSpacing) for ds in slices}
    if len(sizes) > 1 or len(spacings) > 1:
        raise LungsegInputError(f"{folder}: the series mixes image sizes or pixel spacings.")
    if len(slices) < 2:
        raise LungsegInputError(f"{folder}: the CT series has only one slice; a 3D scan "
                                "needs several.")
    row_dir, col_dir = iops[0, :3], iops[0, 3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in slices])
    order = np.argsort(positions @ normal, kind="stable")
    slices, positions = [slices[i] for i in order], positions[order]
    steps = np.diff(positions @ normal)
    if steps.min() < 1e-3:
        raise LungsegInputError(f"{folder}: two slices share a position (several acquisitions "
                                "in one series?); pass --series to pick one.")
    if steps.max() > MAX_GAP_RATIO * np.median(steps):
        raise LungsegInputError(f"{folder}: slices are missing (gap of {steps.max():.2f} mm "
                                f"where slices are {np.median(steps):.2f} mm apart).")
    step = (positions[-1] - positions[0]) / (len(slices) - 1)
    tilt = np.degrees(np.arccos(min(1.0, abs(step @ normal) / np.linalg.norm(step))))
    if tilt > MAX_TILT_DEG:
        raise LungsegInputError(f"{folder}: gantry tilt of {tilt:.1f} degrees; resample the "
                                "series to a regular grid first (e.g. dcm2niix).")
    row_mm, col_mm = (float(v) for v in slices[0].PixelSpacing)  # between rows, between columns
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row_dir * col_mm, col_dir * row_mm, step
    lps[:3, 3] = positions[0]
    return slices, LPS_TO_RAS @ lps


def load_dicom_ct(folder, series_uid: str | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                   nib.Nifti1Header, dict]:
    """Load one CT series from ``folder`` (searched recursively).

    Returns (ct_hu float32 (X, Y, Z), affine float64 (4, 4) RAS mm, a NIfTI header for the
    outputs, info dict: series_uid, n_slices, other_series (UIDs not chosen), patient_id,
    study_date, series_description, files (the slices' files, in the array's slice order)). ``series_uid`` picks a series; by default the CT series
    with the most slices. Raises LungsegInputError naming the folder and the problem.
    """
    folder = Path(folder)
    series = find_ct_series(folder)
    if series_uid is None:
        series_uid = max(series, key=lambda uid: len(series[uid]))
    elif series_uid not in series:
        raise LungsegInputError(f"{folder}: no CT series {series_uid} (found: "
                                f"{', '.join(sorted(series))}).")
    slices, affine = _stack_geometry(folder, series[series_uid])
    pydicom = _pydicom()
    planes = []
    for ds in slices:
        full = pydicom.dcmread(ds.filename)
        try:
            pixels = full.pixel_array.astype(np.float32)
        except Exception as exc:  # noqa: BLE001 - missing codec, truncated data, ...
            syntax = full.file_meta.get("TransferSyntaxUID")
            why = " ".join(str(exc).split())                     # pydicom's text spans lines
            raise LungsegInputError(f"{ds.filename}: pixel data cannot be decoded"
                                    f"{f' ({syntax.name})' if syntax else ''}: {why}") from None
        planes.append(pixels * float(full.get("RescaleSlope", 1.0))
                      + float(full.get("RescaleIntercept", 0.0)))
    ct_hu = np.ascontiguousarray(np.stack(planes, axis=-1).transpose(1, 0, 2), dtype=np.float32)
    header = nib.Nifti1Header()
    header.set_xyzt_units("mm")
    first = slices[0]
    info = {"series_uid": series_uid, "n_slices": len(slices),
            "other_series": sorted(uid for uid in series if uid != series_uid),
            "patient_id": str(first.get("PatientID", "")),
            "study_date": str(first.get("StudyDate", "")),
            "series_description": str(first.get("SeriesDescription", "")),
            "files": [str(ds.filename) for ds in slices]}
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
