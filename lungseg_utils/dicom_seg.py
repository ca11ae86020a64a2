"""The lung mask as a DICOM Segmentation object over the CT series it was predicted on.

A clinic's viewer (3D Slicer, OHIF, a PACS) shows a DICOM SEG over the series it references;
NIfTI it may not read at all. :func:`write_seg` turns the mask that the inference command
wrote for a DICOM input (on the grid :func:`lungseg_utils.dicom.load_dicom_ct` built) into
such an object with highdicom, the field's standard library for it: one frame per CT slice,
each frame tied to its CT image, with coded segment descriptions (SNOMED CT: lung, or right
and left lung) and this project named as the algorithm.

Every source image is matched to its slice of the mask by its position in the world (not
by file order), and a series whose geometry does not match the mask is refused in one line.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import LungsegInputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SEG_SERIES_NUMBER = 900
#: Type-2 attributes (present, may be empty) that the SEG copies from its source images.
TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName")
#: label value -> (segment label, SNOMED CT code, meaning)
SEGMENTS = {"lung": {1: ("Lung", "39607008", "Lung")},
            "lr": {1: ("Right lung", "3341006", "Right lung"),
                   2: ("Left lung", "44029006", "Left lung")}}


def _slice_index(ds, inverse_affine: np.ndarray, n_slices: int, path) -> int:
    """The mask's slice (third axis) that source image ``ds`` lies on, or refuse."""
    lps = np.r_[[float(v) for v in ds.ImagePositionPatient], 1.0]
    ijk = inverse_affine @ (LPS_TO_RAS @ lps)
    k = int(round(ijk[2]))
    if np.abs(ijk[:2]).max() > 1e-2 or abs(ijk[2] - k) > 1e-2 or not 0 <= k < n_slices:
        raise LungsegInputError(f"{path}: this CT image does not lie on the mask's grid "
                                "(another series, or a mask of another scan?).")
    return k


def write_seg(labels, affine, source_files, out_path, *, overwrite: bool = False,
              label_kind: str | None = None, software_version: str = "1.0.0") -> Path:
    """Write ``labels`` as a binary DICOM SEG referencing the CT images ``source_files``.

    Parameters
    ----------
    labels : uint8 (X, Y, Z), on the grid of the series as loaded by
        :func:`lungseg_utils.dicom.load_dicom_ct` (X = columns, Y = rows, Z = slices).
        {0, 1}: lung; {0, 1, 2}: 1 right lung, 2 left lung.
    affine : (4, 4) voxel -> world RAS mm of that grid.
    source_files : the series' DICOM files (any order).
    out_path : the ``.dcm`` file to write (atomically; never a source file).
    label_kind : ``"lung"`` or ``"lr"``; by default ``"lr"`` if label 2 occurs.

    Returns the written path. Raises LungsegInputError if the series and the mask do not
    share one geometry.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    out_path, labels = Path(out_path), np.asarray(labels)
    sources = [Path(p) for p in source_files]
    if out_path.resolve() in {p.resolve() for p in sources}:
        raise LungsegInputError(f"{out_path}: is one of the CT series' files.")
    if out_path.exists() and not overwrite:
        raise LungsegInputError(f"{out_path}: file exists; pass --overwrite to replace it.")
    if labels.ndim != 3 or len(sources) != labels.shape[2]:
        raise LungsegInputError(f"{out_path}: the mask has {labels.shape} voxels but the series "
                                f"{len(sources)} images; they must be one grid.")
    datasets = [pydicom.dcmread(p) for p in sources]
    for ds in datasets:        # type-2 patient and study attributes a SEG copies: empty if absent
        for key in TYPE2_COPIED:
            if key not in ds:
                setattr(ds, key, "")
    inverse = np.linalg.inv(np.asarray(affine, float))
    order = [_slice_index(ds, inverse, labels.shape[2], p) for ds, p in zip(datasets, sources)]
    if sorted(order) != list(range(labels.shape[2])):
        raise LungsegInputError(f"{out_path}: the series' images do not cover the mask's slices "
                                "one to one.")
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    if (cols, rows) != labels.shape[:2]:
        raise LungsegInputError(f"{out_path}: the CT images are {cols} x {rows} pixels, the mask "
                                f"{labels.shape[0]} x {labels.shape[1]}.")
    kind = label_kind or ("lr" if (labels == 2).any() else "lung")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="lungseg 3D U-Net", version=software_version,
        family=codes.DCM.ArtificialIntelligence)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=value, segment_label=label,
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=Code(code, "SCT", meaning),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)
        for value, (label, code, meaning) in SEGMENTS[kind].items()]
    frames = np.stack([labels[:, :, k].T for k in order]).astype(np.uint8)  # (images, rows, cols)
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(),
        series_number=SEG_SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="lungseg", manufacturer_model_name="lungseg 3D U-Net",
        software_versions=software_version, device_serial_number="0",
        series_description="lungseg lungs", omit_empty_frames=False)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".tmp_{out_path.name}")
    try:
        seg.save_as(tmp)
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out_path
