"""A scan as a clinic stores it: a NIfTI file, a case folder or a folder of DICOM files.

The course core reads NIfTI (:func:`lungseg_utils.dataio.load_ct`); this adds DICOM
(:func:`lungseg_utils.scan.dicom.load_dicom_ct`) for the inference command and the viewer.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from .. import dataio
from . import dicom


def is_dicom_folder(path) -> bool:
    """True for a folder without ``ct.nii.gz`` (read as DICOM files)."""
    path = Path(path)
    return path.is_dir() and not (path / dataio.CT_NAME).exists()


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
    no orientation are stored (:func:`lungseg_utils.dataio.load_nifti`; refused without it).
    """
    path = Path(path)
    if not is_dicom_folder(path):
        path = path / dataio.CT_NAME if path.is_dir() else path
        ct, affine, header = dataio.load_nifti(path, "CT", assume_orientation)
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
        dataio.check_hu(ct, path, refuse=assume_hu is False)
    return ct, affine, header, info
