"""Discover, load, validate and save cases: folders ``patient_XXX/`` holding ``ct.nii.gz``
(Hounsfield units) and ``lung.nii.gz`` (any label > 0 is lung) on one grid. What can be wrong
with them is a :class:`~lungseg_utils.errors.LungsegInputError` naming the file and the problem."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from . import config
from .atomic import atomic_write  # noqa: F401 (the writer)
from .errors import LungsegInputError, LungsegWarning, one_line
from .geometry import spacing_from_affine, voxel_volume_ml


def portable_path(path) -> str:
    """``path`` as result files store it and messages show it: relative to the repository if
    in it or beside it (``../shared/data``), else absolute; ``config.REPO_ROOT / it`` reads it."""
    path, root = Path(path).resolve(), config.REPO_ROOT.resolve()
    near = path.is_relative_to(root.parent if root.parent != root.parent.parent else root)
    return Path(os.path.relpath(path, root)).as_posix() if near else str(path)


CT_NAME, MASK_NAME = "ct.nii.gz", "lung.nii.gz"


@dataclass
class Case:
    """One scan in memory, its arrays in the file's voxel order.

    ``case_id`` the folder's name (``patient_001``); ``ct_hu`` float32 (X, Y, Z) in Hounsfield
    units; ``mask`` uint8 {0, 1} (X, Y, Z), or None if the case has no label; ``affine``
    float64 (4, 4), voxel to world (mm), and ``spacing_mm`` (3 floats, along each array axis)
    from the header; ``path`` the CT file; ``labels`` the mask file's labels above 0, all of
    them lung (e.g. (1, 2) for right and left)."""

    case_id: str
    ct_hu: np.ndarray
    mask: np.ndarray | None
    affine: np.ndarray
    spacing_mm: tuple
    path: Path
    header: nib.Nifti1Header | None = field(default=None, repr=False)
    labels: tuple = ()

    @property
    def shape(self) -> tuple:
        return tuple(self.ct_hu.shape)

    @property
    def axcodes(self) -> str:
        return "".join(nib.aff2axcodes(self.affine))

    @property
    def lung_volume_ml(self) -> float:
        if self.mask is None:
            return float("nan")
        return float(self.mask.sum()) * voxel_volume_ml(self.affine)


def discover_cases(data_dir, require_mask: bool = True) -> list[Path]:
    """The sorted case folders (holding ``ct.nii.gz``) under ``data_dir``; raises LungsegInputError
    if it is missing or holds none, or (``require_mask``) if one lacks ``lung.nii.gz``."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise LungsegInputError(f"{data_dir}: data folder does not exist.")
    cases = sorted(p for p in data_dir.iterdir()
                   if (p / CT_NAME).exists() and not p.name.startswith("."))
    if not cases:
        raise LungsegInputError(
            f"{data_dir}: no case folders with a {CT_NAME} found (expected patient_XXX/{CT_NAME}).")
    if require_mask and (missing := [p.name for p in cases if not (p / MASK_NAME).exists()]):
        raise LungsegInputError(f"{data_dir / missing[0] / MASK_NAME}: lung mask missing "
                                f"({len(missing)} case(s) without {MASK_NAME}).")
    return cases


def _read_nifti(path: Path):
    """The NIfTI image in ``path``, read whole: a damaged ``.gz`` is refused, not read half as
    garbage; a plain NIfTI file named ``.gz`` is read as what it is; other formats (an
    ``.hdr``/``.img`` pair) are left to ``nib.load``."""
    if not path.name.endswith((".nii", ".gz")):
        try:
            return nib.load(str(path))
        except Exception as exc:  # noqa: BLE001
            raise LungsegInputError(f"{path}: not a NIfTI image ({one_line(exc)}).") from None
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LungsegInputError(f"{path}: cannot be read ({one_line(exc)}).") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise LungsegInputError(f"{path}: the gzip stream is damaged or truncated "
                                    f"({one_line(exc)}); the file must be copied again.") from None
    sizeof_hdr = {int.from_bytes(raw[:4], order) for order in ("little", "big")}
    klass = nib.Nifti1Image if 348 in sizeof_hdr else nib.Nifti2Image if 540 in sizeof_hdr else None
    if klass is None or len(raw) < 4:
        raise LungsegInputError(f"{path}: not a NIfTI image (no NIfTI-1 or NIfTI-2 header"
                                f"{', after gzip decompression' if path.suffix == '.gz' else ''}).")
    try:
        return klass.from_bytes(raw)
    except Exception as exc:  # noqa: BLE001 - HeaderDataError, ImageFileError, ValueError, ...
        raise LungsegInputError(f"{path}: the NIfTI header is invalid ({one_line(exc)}).") from None


def load_nifti(path, what: str = "image", allow_unoriented: bool = False
               ) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """Read a 3D NIfTI file into (float32 array (X, Y, Z), affine (4, 4), header); a trailing
    singleton axis (X, Y, Z, 1) is squeezed. Raises LungsegInputError for anything but a finite 3D
    volume with an invertible affine, and for a header without orientation (right and left could
    swap) unless ``allow_unoriented`` (:func:`lungseg_utils.scan.reader.load_scan` sets one)."""
    path = Path(path)
    if not path.exists():
        raise LungsegInputError(f"{path}: {what} file is missing.")
    if path.is_dir():
        raise LungsegInputError(f"{path}: expected a NIfTI file but found a folder.")
    img = _read_nifti(path)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - nibabel's and NumPy's many errors, one line
        raise LungsegInputError(f"{path}: voxel data cannot be read ({one_line(exc)}).") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3 or min(data.shape) < 2:
        raise LungsegInputError(
            f"{path}: expected a 3D volume but the image has shape {tuple(data.shape)}.")
    data = np.asarray(data, dtype=np.float32)
    if bad := int((~np.isfinite(data)).sum()):
        raise LungsegInputError(f"{path}: {bad} voxel(s) are NaN or infinite.")
    affine = np.asarray(img.affine, dtype=np.float64)
    unoriented = int(img.header["qform_code"]) == 0 and int(img.header["sform_code"]) == 0
    if unoriented and not allow_unoriented:
        raise LungsegInputError(
            f"{path}: the header has no orientation (qform and sform codes are 0), so "
            "right and left cannot be told apart; pass --assume_orientation with how the "
            "voxels are stored (e.g. LPS or RAS) if you know it.")
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise LungsegInputError(f"{path}: the header's affine is singular or not finite.")
    return data, affine, img.header


def looks_like_hu(ct: np.ndarray) -> bool:
    """True if intensities look like Hounsfield units: a chest CT has air near -1000, so its
    0.5th percentile lies below -200 (:func:`lungseg_utils.scan.reader.hu_problem` says why not)."""
    return bool(np.count_nonzero(ct < -200.0) >= int(0.005 * (ct.size - 1)) + 2   # no sort needed
                or np.percentile(ct, 0.5) < -200.0)


def load_case(case_dir, require_mask: bool = True) -> Case:
    """Load ``case_dir/ct.nii.gz`` and ``case_dir/lung.nii.gz`` into a :class:`Case`, the mask
    binarised (label > 0 is lung) to uint8, its labels kept in ``Case.labels``. Raises
    LungsegInputError if a file is missing or bad, if CT and mask differ in shape or affine, or
    if the mask's values are not labels (a copy of the CT); warns for an empty mask or a CT that
    does not look like HU (:func:`looks_like_hu`)."""
    case_dir = Path(case_dir)
    if not case_dir.is_dir():
        raise LungsegInputError(f"{case_dir}: case folder does not exist.")
    ct_path, mask_path = case_dir / CT_NAME, case_dir / MASK_NAME
    ct, affine, header = load_nifti(ct_path, "CT")
    if not looks_like_hu(ct):
        warnings.warn(f"{ct_path}: intensities do not look like HU (no air below -200).",
                      LungsegWarning, stacklevel=2)
    mask, labels = None, ()
    if mask_path.exists() or require_mask:
        m, m_affine, _ = load_nifti(mask_path, "lung mask")
        if m.shape != ct.shape:
            raise LungsegInputError(
                f"{mask_path}: mask shape {m.shape} differs from CT shape {ct.shape}.")
        if not np.allclose(m_affine, affine, atol=1e-3):
            raise LungsegInputError(f"{mask_path}: mask affine differs from the CT's affine.")
        if m.min() < 0 or not np.array_equal(m, np.round(m)):
            hint = " (they are the CT's: the mask file is a copy of the CT?)"
            raise LungsegInputError(f"{mask_path}: mask values are not labels (negative or "
                                    f"fractional values{hint if np.array_equal(m, ct) else ''}); "
                                    "a lung mask holds 0 and 1, or integer labels > 0.")
        mask = (m > 0).astype(np.uint8)
        labels = tuple(int(v) for v in np.unique(m) if v > 0)
        if not mask.any():
            warnings.warn(f"{mask_path}: the lung mask is empty.", LungsegWarning, stacklevel=2)
    return Case(case_id=case_dir.name, ct_hu=ct, mask=mask, affine=affine,
                spacing_mm=spacing_from_affine(affine), path=ct_path, header=header, labels=labels)


def load_cases(data_dir, require_mask: bool = True, max_cases: int | None = None) -> list[Case]:
    """Load every case under ``data_dir`` (the first ``max_cases`` if given)."""
    folders = discover_cases(data_dir, require_mask=require_mask)[:max_cases or None]
    return [load_case(f, require_mask=require_mask) for f in folders]


def save_nifti(data: np.ndarray, affine: np.ndarray, path, header=None,
               overwrite: bool = False) -> Path:
    """Write ``data`` (its dtype) with ``affine`` to ``path`` atomically, ``header`` (e.g. the
    input's) copied so that units and codes carry over; replaces a file only if ``overwrite``."""
    hdr = header.copy() if header is not None else None
    img = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=np.float64), header=hdr)
    img.set_data_dtype(np.asarray(data).dtype)
    img.header.set_slope_inter(1.0, 0.0)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_write(path, overwrite) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def file_sha256(path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (for provenance in ``train_config.json``)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def make_split(case_ids, val_fraction: float = 0.15, test_fraction: float = 0.2,
               seed: int = 42) -> dict:
    """A seeded, patient-level split ``{"seed", "train", "val", "test"}`` (sorted lists).

    ``case_ids`` are patient identifiers (one per patient); each lands in exactly one part.
    With n cases, test gets round(n * test_fraction) (at least 1 if n >= 3), val
    round(n * val_fraction) (at least 1 if n >= 2), train the rest."""
    ids = sorted(set(str(c) for c in case_ids))
    if len(ids) != len(list(case_ids)):
        raise LungsegInputError("make_split: the same patient id appears twice in case_ids.")
    n = len(ids)
    if n < 2:
        raise LungsegInputError(f"make_split: need at least 2 cases, got {n}.")
    n_test = max(1 if n >= 3 else 0, int(round(n * test_fraction)))
    n_val = max(1, int(round(n * val_fraction)))
    if n_test + n_val >= n:
        n_test = max(0, n - n_val - 1)
    shuffled = [ids[i] for i in np.random.default_rng(seed).permutation(n)]
    parts = {"test": shuffled[:n_test], "val": shuffled[n_test:n_test + n_val],
             "train": shuffled[n_test + n_val:]}
    return {"seed": int(seed), **{k: sorted(v) for k, v in parts.items()}}


def save_json(obj, path, overwrite: bool = False) -> Path:
    """Write ``obj`` as indented JSON atomically; refuse to replace a file unless ``overwrite``."""
    with atomic_write(path, overwrite) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    return Path(path)


def _json_default(o):
    if isinstance(o, (np.integer, np.floating, np.ndarray)):
        return o.tolist()                     # NumPy scalars as int and float, arrays as lists
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def load_json(path) -> dict:
    """Read a JSON file, with a clear error if it is missing or malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise LungsegInputError(f"{path}: file is missing.") from None
    except json.JSONDecodeError as exc:
        raise LungsegInputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}).") from None


def describe_case(case: Case) -> dict:
    """One row of the data table: a dict of ``case_id, shape, spacing_mm, axcodes, hu_min,
    hu_max, lung_volume_ml, lung_fraction`` (of the volume's voxels), ``lung_mean_hu`` and
    ``touches_border`` (whether the mask reaches a face of the volume)."""
    m = np.zeros(case.shape, bool) if case.mask is None else case.mask > 0
    faces = [m[0], m[-1], m[:, 0], m[:, -1], m[:, :, 0], m[:, :, -1]]
    return {"case_id": case.case_id, "shape": tuple(int(s) for s in case.shape),
            "spacing_mm": tuple(round(float(s), 3) for s in case.spacing_mm),
            "axcodes": case.axcodes, "hu_min": float(case.ct_hu.min()),
            "hu_max": float(case.ct_hu.max()), "lung_volume_ml": case.lung_volume_ml,
            "lung_fraction": float(m.mean()),
            "lung_mean_hu": float(case.ct_hu[m].mean()) if m.any() else float("nan"),
            "touches_border": bool(any(f.any() for f in faces))}


def format_table(rows: list[dict], columns: dict) -> str:
    """Plain-text table: ``columns`` maps a row key to a format spec (e.g. ``{"dice": ".3f"}``)."""
    cells = [[format(r[k], f) if f else str(r[k]) for k, f in columns.items()] for r in rows]
    heads = list(columns)
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(heads), line(["-" * w for w in widths])] + [line(c) for c in cells])
