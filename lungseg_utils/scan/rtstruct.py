"""Expert contours from a DICOM RTSTRUCT, filled into a mask on the CT's grid.

LCTSC ships its expert lung contours as an RT Structure Set: per organ (``Lung_L``,
``Lung_R``, ...), one closed polygon per CT slice in patient coordinates (DICOM's L,P,S mm).
:func:`lung_mask_from_rtstruct` finds the two lungs by name (case-insensitively), takes each
polygon to the CT's voxel grid through the CT's affine and fills it, as rt-utils does: the
voxels whose centres lie inside; polygons on the same slice combine by even-odd (a contour
inside another is a hole). The result is the union Lung_L ∪ Lung_R, the course data's label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import LungsegInputError
from .dicom import LPS_TO_RAS

LUNG_ROIS = ("Lung_L", "Lung_R")


def roi_contours(path, names=LUNG_ROIS) -> dict[str, list[np.ndarray]]:
    """``{name: [polygon float64 (n, 3) LPS mm, ...]}`` for each ROI in ``names`` (matched
    case-insensitively, '-', '_' and spaces alike) of the RTSTRUCT at ``path``. Raises
    LungsegInputError naming the file if one is missing."""
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001
        raise LungsegInputError(f"{path}: not a readable DICOM file ({exc}).") from None
    if ds.get("Modality") != "RTSTRUCT":
        raise LungsegInputError(f"{path}: not an RT Structure Set (Modality {ds.get('Modality')}).")

    def key(name):
        return "".join(ch for ch in str(name).lower() if ch.isalnum())

    numbers = {key(r.ROIName): int(r.ROINumber) for r in ds.get("StructureSetROISequence", [])}
    polygons = {int(c.ReferencedROINumber): [
        np.asarray(item.ContourData, float).reshape(-1, 3)
        for item in c.get("ContourSequence", [])
        if item.get("ContourGeometricType", "CLOSED_PLANAR") == "CLOSED_PLANAR"]
        for c in ds.get("ROIContourSequence", [])}
    found = {}
    for name in names:
        if key(name) not in numbers:
            raise LungsegInputError(f"{path}: no ROI named {name} (found: "
                                    f"{', '.join(str(r.ROIName) for r in ds.StructureSetROISequence)}).")
        found[name] = polygons.get(numbers[key(name)], [])
    return found


def fill_polygons(polygons, affine, shape) -> np.ndarray:
    """Fill closed polygons (LPS mm) into a bool (X, Y, Z) mask on the grid of ``affine``
    (voxel -> RAS mm, slices along the third axis): voxels whose centres lie inside, even-odd
    per slice. A polygon off the grid's slices (more than half a slice away) is refused."""
    from matplotlib.path import Path as Polygon

    mask = np.zeros(shape, bool)
    inverse = np.linalg.inv(np.asarray(affine, float))
    ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    centres = np.column_stack([ii.ravel(), jj.ravel()])
    for points in polygons:
        ras = points @ LPS_TO_RAS[:3, :3].T
        ijk = ras @ inverse[:3, :3].T + inverse[:3, 3]
        k = int(round(float(np.median(ijk[:, 2]))))
        if np.abs(ijk[:, 2] - k).max() > 0.5 or not 0 <= k < shape[2]:
            raise LungsegInputError(f"a contour at z = {points[0, 2]:.1f} mm lies off the CT's "
                                    "slices (another series, or a tilted contour?).")
        inside = Polygon(ijk[:, :2]).contains_points(centres).reshape(shape[:2])
        mask[:, :, k] ^= inside
    return mask


def lung_mask_from_rtstruct(path, affine, shape, names=LUNG_ROIS) -> np.ndarray:
    """The union of the ROIs ``names`` (default Lung_L, Lung_R) as uint8 (X, Y, Z) {0, 1}
    on the CT grid (``affine``: voxel -> RAS mm, as :func:`lungseg_utils.scan.dicom.load_dicom_ct`
    returns it)."""
    mask = np.zeros(shape, bool)
    for name, polygons in roi_contours(path, names).items():
        try:
            mask |= fill_polygons(polygons, affine, shape)
        except LungsegInputError as exc:
            raise LungsegInputError(f"{path}: ROI {name}: {exc}") from None
    return mask.astype(np.uint8)
