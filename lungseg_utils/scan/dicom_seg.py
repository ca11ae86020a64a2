"""The lung mask as a DICOM Segmentation object over the CT series it was predicted on.

A clinic's viewer (3D Slicer, OHIF, a PACS) shows a DICOM SEG over the series it references;
NIfTI it may not read at all. :func:`write_seg` turns the mask that the inference command
wrote for a DICOM input (on the grid :func:`lungseg_utils.scan.dicom.load_dicom_ct` built) into
such an object with highdicom, the field's standard library for it: one frame per CT slice,
each frame tied to its CT image, with coded segment descriptions (SNOMED CT: lung, or right
and left lung) and this project named as the algorithm.

Every source image is matched to its slice of the mask by its position in the world (not
by file order), and a series whose geometry does not match the mask (another series,
positions off the grid, another orientation or pixel spacing, missing or extra images) is
refused in one line naming the file and the problem.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import dataio
from ..errors import LungsegInputError
from .dicom import LPS_TO_RAS

SEG_SERIES_NUMBER = 900
GRID_TOL = 1e-2             # voxels: how far an image's position may lie off the mask's grid
#: Type-2 attributes (present, may be empty) that the SEG copies from its source images.
TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName")
#: segment label (lower case) -> (segment label, SNOMED CT code of the segmented property type)
SEGMENT_CODES = {"lung": ("Lung", "39607008"), "right lung": ("Right lung", "3341006"),
                 "left lung": ("Left lung", "44029006")}
#: the inference command's --labels -> segment labels of the values 1, 2, ...
LABEL_KINDS = {"lung": ("Lung",), "lr": ("Right lung", "Left lung")}


def _software_version() -> str:
    from .. import __version__

    return str(__version__ or "1.0.0")


def _read(path: Path):
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)   # no preamble: read too
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
        raise LungsegInputError(f"{path}: not a readable DICOM file "
                                f"({' '.join(str(exc).split())}).") from None
    for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows",
                "Columns", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        if key not in ds:
            raise LungsegInputError(f"{path}: not a CT image with geometry (no {key}).")
    for key in TYPE2_COPIED:    # type-2 patient and study attributes a SEG copies: empty if absent
        if key not in ds:
            setattr(ds, key, "")
    return ds


def _slice_index(ds, affine: np.ndarray, inverse: np.ndarray, shape, path) -> int:
    """The mask's slice (third axis) that source image ``ds`` lies on, or refuse."""
    if (int(ds.Columns), int(ds.Rows)) != tuple(shape[:2]):
        raise LungsegInputError(f"{path}: the image is {ds.Columns} x {ds.Rows} pixels "
                                f"(columns x rows), the mask's slices {shape[0]} x {shape[1]}.")
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    row_mm, col_mm = (float(v) for v in ds.PixelSpacing)    # between rows, between columns
    axes = LPS_TO_RAS[:3, :3] @ np.stack([iop[:3] * col_mm, iop[3:] * row_mm], axis=1)
    if not np.allclose(axes, affine[:3, :2], atol=1e-3 * max(1.0, np.abs(axes).max())):
        raise LungsegInputError(f"{path}: the image's orientation or pixel spacing differs "
                                "from the mask's grid (another series or storage order?).")
    lps = np.r_[[float(v) for v in ds.ImagePositionPatient], 1.0]
    ijk = inverse @ (LPS_TO_RAS @ lps)
    k = int(round(ijk[2]))
    if np.abs(ijk[:2]).max() > GRID_TOL or abs(ijk[2] - k) > GRID_TOL or not 0 <= k < shape[2]:
        raise LungsegInputError(f"{path}: this CT image does not lie on the mask's grid "
                                "(another series, or a mask of another scan?).")
    return k


def _segment_names(labels: np.ndarray, label_names, label_kind, out_path) -> list[str]:
    if label_names is None:
        kind = label_kind or ("lr" if (labels == 2).any() else "lung")
        if kind not in LABEL_KINDS:
            raise LungsegInputError(f"{out_path}: unknown label kind {kind!r} "
                                    f"(one of {', '.join(LABEL_KINDS)}).")
        label_names = LABEL_KINDS[kind]
    names = [str(n) for n in label_names]
    unknown = [n for n in names if n.lower() not in SEGMENT_CODES]
    if unknown or not names:
        raise LungsegInputError(f"{out_path}: no code for segment label(s) {unknown or names} "
                                f"(known: {', '.join(v[0] for v in SEGMENT_CODES.values())}).")
    values = np.unique(labels)
    if values.min() < 0 or values.max() > len(names) or not np.array_equal(values, values.round()):
        raise LungsegInputError(f"{out_path}: the mask holds the values "
                                f"{values.tolist()[:8]}, but the segments are 1..{len(names)} "
                                f"({', '.join(names)}).")
    return names


def write_seg(labels, affine, source_files, out_path, *, overwrite: bool = False,
              model_name: str = "lungseg 3D U-Net", label_names=None,
              label_kind: str | None = None) -> Path:
    """Write ``labels`` as a binary DICOM SEG referencing the CT images ``source_files``.

    Parameters
    ----------
    labels : uint8 (X, Y, Z), on the grid of the series as loaded by
        :func:`lungseg_utils.scan.dicom.load_dicom_ct` (X = columns, Y = rows, Z = slices).
        {0, 1}: lung; {0, 1, 2}: 1 right lung, 2 left lung.
    affine : (4, 4) voxel -> world RAS mm of that grid.
    source_files : the series' DICOM files (any order), one per slice of ``labels``.
    out_path : the ``.dcm`` file to write (atomically; never a source file; an existing
        file only with ``overwrite``).
    model_name : the algorithm's and the equipment's model name in the SEG.
    label_names : segment labels of the values 1, 2, ... ("Lung", "Right lung", "Left lung",
        any case); by default from ``label_kind``.
    label_kind : ``"lung"`` (1 = Lung) or ``"lr"`` (1 = Right lung, 2 = Left lung), as the
        inference command's ``--labels``; by default ``"lr"`` if label 2 occurs.

    Returns the written path. Raises LungsegInputError (one line naming the file and the
    problem) if the series and the mask do not share one geometry or a path is refused.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    out_path, labels = Path(out_path), np.asarray(labels)
    sources = [Path(p) for p in source_files]
    if out_path.resolve() in {p.resolve() for p in sources}:
        raise LungsegInputError(f"{out_path}: is one of the CT series' files.")
    if out_path.is_dir():
        raise LungsegInputError(f"{out_path}: is a folder, not a .dcm file.")
    if out_path.exists() and not overwrite:
        raise LungsegInputError(f"{out_path}: file exists; pass --overwrite to replace it.")
    affine = np.asarray(affine, dtype=np.float64)
    if labels.ndim != 3 or affine.shape != (4, 4) or len(sources) != labels.shape[2]:
        raise LungsegInputError(f"{out_path}: the mask has {labels.shape} voxels but the series "
                                f"{len(sources)} images; they must be one grid.")
    names = _segment_names(labels, label_names, label_kind, out_path)
    datasets = [_read(p) for p in sources]
    for key in ("SeriesInstanceUID", "FrameOfReferenceUID"):
        found = {str(ds.get(key, "")) for ds in datasets}
        if len(found) > 1:
            raise LungsegInputError(f"{sources[0]}: the source files span {len(found)} "
                                    f"{key}s; pass the images of one CT series.")
    inverse = np.linalg.inv(affine)
    order = [_slice_index(ds, affine, inverse, labels.shape, p)
             for ds, p in zip(datasets, sources)]
    if sorted(order) != list(range(labels.shape[2])):
        twice = next(p for p, k in zip(sources, order) if order.count(k) > 1)
        raise LungsegInputError(f"{twice}: lies on the same slice of the mask as another "
                                "image; the series' images must cover the slices one to one.")
    by_slice = sorted(range(len(order)), key=order.__getitem__)
    datasets = [datasets[i] for i in by_slice]             # source image k <-> mask slice k
    frames = np.stack([labels[:, :, k].T for k in range(labels.shape[2])]).astype(np.uint8)
    version = _software_version()
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model_name, version=version, family=codes.DCM.ArtificialIntelligence)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=value, segment_label=SEGMENT_CODES[name.lower()][0],
        segmented_property_category=Code("91723000", "SCT", "Anatomical Structure"),
        segmented_property_type=Code(SEGMENT_CODES[name.lower()][1], "SCT",
                                     SEGMENT_CODES[name.lower()][0]),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)
        for value, name in enumerate(names, start=1)]
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=frames,          # (images, rows, columns)
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(),
        series_number=SEG_SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="lungseg", manufacturer_model_name=model_name,
        software_versions=version, device_serial_number="0",
        series_description="lungseg lungs", omit_empty_frames=False)
    with dataio.atomic_write(out_path, overwrite=overwrite) as tmp, open(tmp, "wb") as f:
        seg.save_as(f)
    return out_path
