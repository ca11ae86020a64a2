"""A scan as a clinic stores it: a NIfTI file, a case folder or a folder of DICOM files.

The course core reads NIfTI (:func:`lungseg_utils.dataio.load_nifti`); this adds DICOM
(:func:`lungseg_utils.scan.dicom.load_dicom_ct`), the check that intensities are HU and the
rescale into HU, for the inference command and the viewer.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

from .. import dataio
from ..errors import LungsegInputError, LungsegWarning
from . import dicom


def is_dicom_folder(path) -> bool:
    """True for a folder without ``ct.nii.gz`` (read as DICOM files)."""
    path = Path(path)
    return path.is_dir() and not (path / dataio.CT_NAME).exists()


def hu_problem(ct: np.ndarray) -> str | None:
    """Why intensities do not look like Hounsfield units, with what to do about it (the
    command's ``--rescale``), or None when they do (:func:`lungseg_utils.dataio.looks_like_hu`)."""
    if dataio.looks_like_hu(ct):
        return None
    lo, hi = float(np.percentile(ct, 0.5)), float(np.percentile(ct, 99.5))
    if hi <= 1.0 + 1e-6:
        return ("all in [0, 1] (already normalised?); for this project's window that is "
                "--rescale 1300 -1000")
    if lo >= 0.0 and hi < 1000.0:
        return (f"in [{lo:.0f}, {hi:.0f}], too narrow a range for CT numbers (an 8-bit picture "
                "or a display export?); no rescale recovers HU from it: use the scan as the "
                "scanner stored it")
    if lo >= 0.0:
        return (f"in [{lo:.0f}, {hi:.0f}], with no air below -200 (raw scanner values without "
                "their intercept?); usually --rescale 1 -1024")
    return f"in [{lo:.0f}, {hi:.0f}] with no air below -200"


def check_hu(ct: np.ndarray, path, refuse: bool = False) -> None:
    """Warn (LungsegWarning), or with ``refuse`` raise LungsegInputError, if intensities do
    not look like Hounsfield units (:func:`hu_problem`)."""
    why = hu_problem(ct)
    if why is None:
        return
    if refuse:
        raise LungsegInputError(f"{path}: intensities do not look like HU: {why}; pass "
                                "--rescale SLOPE INTERCEPT to turn them into HU, or --assume_hu "
                                "if they are HU.")
    warnings.warn(f"{path}: intensities do not look like HU: {why}.", LungsegWarning, stacklevel=3)


def orientation_affine(axcodes: str, spacing_mm) -> np.ndarray:
    """The (4, 4) affine of voxels stored along ``axcodes`` (e.g. ``"LPS"``: the first array
    axis runs to the patient's left, ...) with ``spacing_mm``, origin at voxel 0."""
    codes = str(axcodes).upper()
    world = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
    if (len(codes) != 3 or any(c not in world for c in codes)
            or len({world[c][0] for c in codes}) != 3):
        raise LungsegInputError(f"--assume_orientation {axcodes}: three letters, one of R/L, "
                                "A/P and S/I each, e.g. LPS or RAS.")
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for axis, (code, step) in enumerate(zip(codes, spacing_mm)):
        row, sign = world[code]
        affine[row, axis] = sign * float(step)
    return affine


def load_scan(path, series_uid: str | None = None, rescale=None, assume_hu: bool | None = None,
              assume_orientation: str | None = None
              ) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header, dict]:
    """Load a CT from a NIfTI file, a folder holding ``ct.nii.gz``, or a folder of DICOM files.

    Returns (ct_hu float32 (X, Y, Z), affine (4, 4) RAS mm, header, info); ``info`` is
    ``{"format": "nifti", "file": ...}`` or, for DICOM, ``"format": "dicom"`` with the series
    read (:func:`lungseg_utils.scan.dicom.load_dicom_ct`; ``series_uid`` picks one, by
    default the best of :func:`lungseg_utils.scan.dicom.rank_series`: most slices, then the
    thinnest, then a lung reconstruction). ``rescale`` = (slope, intercept) turns stored
    values into HU (``hu = slope * v + intercept``). ``assume_hu``: None warns on intensities
    that do not look like HU, False refuses them (the inference command), True accepts them.
    ``assume_orientation`` (e.g. ``"LPS"``): how the voxels of a NIfTI file whose header has
    no orientation are stored (:func:`orientation_affine` with the header's voxel sizes, set
    in the header; :func:`lungseg_utils.dataio.load_nifti` refuses such a file without it).
    """
    path = Path(path)
    if not is_dicom_folder(path):
        path = path / dataio.CT_NAME if path.is_dir() else path
        assume = assume_orientation is not None
        ct, affine, header = dataio.load_nifti(path, "CT", allow_unoriented=assume)
        if assume and int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
            affine = orientation_affine(assume_orientation, header.get_zooms()[:3])
            header.set_sform(affine, code=1)
            header.set_qform(affine, code=1)
        info = {"format": "nifti", "file": str(path)}
        if assume_orientation:
            info["assumed_orientation"] = str(assume_orientation).upper()
    else:
        ct, affine, header, info = dicom.load_dicom_ct(path, series_uid)
        info = {"format": "dicom", "folder": str(path), **info}
    if rescale is not None:
        slope, intercept = (float(v) for v in rescale)
        ct = (ct * slope + intercept).astype(np.float32)
        info["rescale"] = [slope, intercept]
    if assume_hu is not True:
        check_hu(ct, path, refuse=assume_hu is False)
    return ct, affine, header, info


def load_ct(path, assume_hu: bool | None = None, assume_orientation: str | None = None
            ) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """Load a CT from a NIfTI file or a folder holding ``ct.nii.gz``: :func:`load_scan`
    without DICOM or a rescale, and without its ``info``.

    Returns (ct_hu float32 (X, Y, Z), affine (4, 4) RAS mm, header). ``assume_hu``: None warns
    on intensities that do not look like HU (:func:`check_hu`), False refuses them, True
    accepts them silently; ``assume_orientation``: for a header without one
    (:func:`lungseg_utils.dataio.load_nifti`).
    """
    path = Path(path)
    if path.is_dir() and not (path / dataio.CT_NAME).exists():
        raise LungsegInputError(f"{path}: folder holds no {dataio.CT_NAME} (a folder of DICOM "
                                "files is read by lungseg segment).")
    return load_scan(path, assume_hu=assume_hu, assume_orientation=assume_orientation)[:3]
