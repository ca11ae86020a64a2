"""The model grid, the way there and back, and the affine helpers everything else uses.

The network sees a 64 x 64 x 64 cube of 5 mm voxels, array axes to the patient's Left,
Posterior, Superior (``L, P, S``), centred on the lungs as seen in the image (never the label):
:func:`to_model_grid` takes any CT there, :func:`from_model_grid` a probability back."""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from .config import MODEL_SHAPE, MODEL_SPACING_MM
from .errors import LungsegInputError
from .anatomy import body_mask, bounding_box, largest_components

MODEL_AXCODES = ("L", "P", "S")              # model-grid axis directions, nibabel axis codes
AIR_HU = -1000.0
LUNG_HU = -400.0                             # below it inside the body: lung, to centre on


def spacing_from_affine(affine: np.ndarray) -> tuple:
    """Voxel size in mm along each array axis: the column norms of the affine's 3x3 part."""
    return tuple(float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in mL: |det| of the affine's 3x3 part (right for a sheared grid too)."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0


def axial_axis(affine: np.ndarray) -> int:
    """The array axis closest to the world's head-foot (z) direction."""
    a = np.asarray(affine)[:3, :3]
    return int(np.argmax(np.abs(a[2]) / np.linalg.norm(a, axis=0)))


def bbox_centre_mm(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World position (mm, float64 (3,)) of the centre of the bounding box of ``mask``'s
    nonzero voxels on the grid of ``affine``. Raises LungsegInputError for an empty mask."""
    idx = np.argwhere(np.asarray(mask))
    if idx.size == 0:
        raise LungsegInputError("the mask is empty: it has no bounding box to centre on.")
    return (np.asarray(affine, dtype=np.float64) @ np.r_[(idx.min(0) + idx.max(0)) / 2.0, 1.0])[:3]


def lps_affine(shape, spacing_mm, centre_mm=(0.0, 0.0, 0.0)) -> np.ndarray:
    """An axis-aligned L, P, S affine of a grid of ``shape`` voxels (``spacing_mm`` each,
    one number or one per axis) whose centre lies at world ``centre_mm``."""
    spacing = np.broadcast_to(np.asarray(spacing_mm, float), (3,))
    aff = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    aff[:3, 3] = np.asarray(centre_mm, float) - aff[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return aff


@dataclass(frozen=True)
class ModelGrid:
    """Where the 64^3 model cube lies in the world: ``affine`` float64 (4, 4), model voxel ->
    world mm; ``source_shape`` and ``source_affine``, those of the input volume;
    ``passthrough``, True when the input already was a 64^3, 5 mm grid (no interpolation)."""

    affine: np.ndarray
    source_shape: tuple
    source_affine: np.ndarray
    passthrough: bool = False

    @property
    def centre_mm(self) -> np.ndarray:
        """World position (mm) of the cube's centre."""
        return (self.affine @ np.r_[(np.array(MODEL_SHAPE) - 1) / 2.0, 1.0])[:3]


def model_affine(centre_mm) -> np.ndarray:
    """Affine of the model cube (64^3, 5 mm, L, P, S) centred on world ``centre_mm``."""
    return lps_affine(MODEL_SHAPE, MODEL_SPACING_MM, centre_mm)


def is_model_sized(shape, affine) -> bool:
    """True if a volume is 64^3 with 5 mm voxels along axes that are aligned with the world."""
    off_axis = np.sort(np.abs(np.asarray(affine)[:3, :3]) / MODEL_SPACING_MM, axis=0)[:2]
    return (tuple(shape) == MODEL_SHAPE and np.allclose(off_axis, 0.0, atol=1e-4)
            and np.allclose(spacing_from_affine(affine), MODEL_SPACING_MM, atol=1e-3))


def lung_centre_mm(ct_hu: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Estimate the centre of the lungs' bounding box (world mm) from the image alone.

    Components below :data:`LUNG_HU` inside the body on a copy subsampled to about 4 mm (R, A,
    S): the largest, of 50 mL or more, and a second of at least a fifth of its volume (the other
    lung). Their box is measured at full resolution, less axial slices under 3 % of the largest
    area (the trachea). Falls back to the body's (or the volume's) centre."""
    ornt = nib.orientations.io_orientation(affine)
    affine = np.asarray(affine) @ nib.orientations.inv_ornt_aff(ornt, np.shape(ct_hu))
    ct_hu = nib.orientations.apply_orientation(np.asarray(ct_hu), ornt)
    spacing = np.array(spacing_from_affine(affine))
    step = np.maximum(1, np.floor(4.0 / spacing)).astype(int)
    sub = ct_hu[::step[0], ::step[1], ::step[2]]
    body = body_mask(sub, LUNG_HU, axis=2)                       # R, A, S: slices along S
    low = ndi.binary_opening((sub < LUNG_HU) & body, iterations=1)
    voxel_ml = float(np.prod(spacing * step)) / 1000.0
    region = largest_components(low, 2, min_fraction=0.2,
                                min_voxels=int(np.ceil(50.0 / voxel_ml)), connectivity=1)
    if not region.any():
        region = body if body.any() else np.ones(sub.shape, bool)
        return bbox_centre_mm(region, affine @ np.diag([*step, 1]))   # the subsampled grid
    # full resolution, in the components' box: low HU near them, whatever the subsampling's phase
    near = ndi.binary_dilation(region, iterations=1)
    box = [np.arange(b.start * k, n if b.stop == m else b.stop * k)
           for b, n, k, m in zip(bounding_box(near), ct_hu.shape, step, near.shape)]
    up = near[np.ix_(*(np.minimum(b // k, m - 1) for b, k, m in zip(box, step, near.shape)))]
    full = up & (ct_hu[np.ix_(*box)] < LUNG_HU)
    area = full.sum(axis=(0, 1)).astype(float) * spacing[0] * spacing[1]
    full &= (area >= 0.03 * area.max())[None, None, :]   # the trachea: a small low-HU area
    return bbox_centre_mm(full, affine) + affine[:3, :3] @ [b[0] for b in box]


def _reach(matrix, shape_from, shape_to, pad: int) -> tuple:
    """The box (slices) of a grid of ``shape_to`` that the voxels of a grid of ``shape_from``
    map into through ``matrix`` (from-voxel -> to-voxel, (4, 4)), ``pad`` voxels wider."""
    corners = np.array(np.meshgrid(*[(0, n - 1) for n in shape_from], indexing="ij"))
    pts = matrix[:3, :3] @ corners.reshape(3, -1) + matrix[:3, 3:]
    start = np.clip(np.floor(pts.min(axis=1)).astype(int) - pad, 0, shape_to)
    stop = np.clip(np.ceil(pts.max(axis=1)).astype(int) + pad + 1, 0, shape_to)
    return tuple(slice(a, b) for a, b in zip(start, stop))


def resample(volume, src_affine, dst_affine, dst_shape, order=1, cval=0.0, smooth=False):
    """Sample ``volume`` (on ``src_affine``) at the voxels of a ``dst`` grid (float32); with
    ``smooth``, first a Gaussian anti-aliasing along the input axes sampled more coarsely.
    Only the input the ``dst`` grid reaches is read, and with ``order`` 0 or 1 only the output
    that input voxels other than ``cval`` reach is computed (the rest is ``cval`` anyway)."""
    vol = np.asarray(volume, dtype=np.float32)
    matrix = np.linalg.inv(src_affine) @ dst_affine  # dst voxel -> src voxel
    # within 1e-6 of whole voxels: whole voxels (a copy or a flip stays exact)
    rot, offset = (np.round(a) if np.allclose(a, np.round(a), atol=1e-6) else a
                   for a in (matrix[:3, :3], matrix[:3, 3]))
    sigma = np.maximum(0.0, (np.abs(rot).sum(axis=1) - 1.0) / 2.0)  # src voxels per dst voxel
    smooth = smooth and bool(np.any(sigma > 0.05))
    box = _reach(matrix, dst_shape, vol.shape, 2 + int(4.0 * sigma.max() + 0.5) * smooth)
    vol, offset = vol[box], offset - [b.start for b in box]
    out = np.full(tuple(dst_shape), cval, np.float32)
    if smooth and vol.size:
        vol = ndi.gaussian_filter(vol, sigma=sigma, mode="nearest")
    part = bounding_box(vol != cval)                      # the input's other values
    if any(p.stop <= p.start for p in part):
        return out
    if order <= 1:   # the output within one input voxel of them
        to_dst = np.linalg.inv(np.vstack([np.c_[rot, offset], [0, 0, 0, 1]]))
        to_dst[:3, 3] += to_dst[:3, :3] @ [p.start - 1 for p in part]
        part = _reach(to_dst, [p.stop - p.start + 2 for p in part], out.shape, 1)
    else:
        part = tuple(slice(0, n) for n in out.shape)
    offset = offset + rot @ [p.start for p in part]
    out[part] = ndi.affine_transform(vol, rot, offset=offset, output_shape=out[part].shape,
                                     order=order, mode="constant", cval=cval, prefilter=False)
    return out


def make_model_grid(ct_hu: np.ndarray, affine: np.ndarray, centre_mm=None) -> ModelGrid:
    """Decide where the model cube goes for this CT (see :func:`to_model_grid`)."""
    affine = np.asarray(affine, dtype=np.float64)
    if ct_hu.ndim != 3:
        raise LungsegInputError(f"to_model_grid: expected a 3D CT, got shape {ct_hu.shape}.")
    if centre_mm is None and is_model_sized(ct_hu.shape, affine):
        ornt = nib.orientations.io_orientation(affine)
        to_lps = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt(MODEL_AXCODES))
        grid_affine = affine @ nib.orientations.inv_ornt_aff(to_lps, ct_hu.shape)
        return ModelGrid(grid_affine, tuple(ct_hu.shape), affine, passthrough=True)
    centre_mm = lung_centre_mm(ct_hu, affine) if centre_mm is None else centre_mm
    return ModelGrid(model_affine(centre_mm), tuple(ct_hu.shape), affine)


def to_model_grid(ct_hu: np.ndarray, affine: np.ndarray, centre_mm=None):
    """Take a CT (X, Y, Z), HU, with its affine (voxel -> world mm) onto the model grid.

    ``centre_mm``: the cube's centre (default :func:`lung_centre_mm`, or the input's own grid
    if it already is 64^3, 5 mm). Returns ``(ct64_hu, grid)``: float32 (64, 64, 64), -1000 HU
    outside the input, and the :class:`ModelGrid` that brings results back."""
    ct_hu = np.asarray(ct_hu)
    grid = make_model_grid(ct_hu, affine, centre_mm)
    ct64 = resample(ct_hu, grid.source_affine, grid.affine, MODEL_SHAPE, order=1,
                    cval=AIR_HU, smooth=not grid.passthrough)
    return ct64, grid


def mask_to_model_grid(mask: np.ndarray, grid: ModelGrid) -> np.ndarray:
    """Take a mask (same grid as the CT that made ``grid``) to the model grid: float32
    (64, 64, 64) in [0, 1], the fraction of lung in each model voxel (0.5 and up: a label)."""
    mask = np.asarray(mask)
    if mask.shape != tuple(grid.source_shape):
        raise LungsegInputError(
            f"mask_to_model_grid: mask shape {mask.shape} differs from the CT's {grid.source_shape}.")
    out = resample((mask > 0).astype(np.float32), grid.source_affine, grid.affine, MODEL_SHAPE,
                   order=1, cval=0.0, smooth=not grid.passthrough)
    return np.clip(out, 0.0, 1.0)


def from_model_grid(volume64: np.ndarray, grid: ModelGrid, order: int = 1) -> np.ndarray:
    """Bring a 64^3 model-grid volume (a probability, usually) back onto the input's grid:
    float32, ``grid.source_shape``, 0 outside the cube. Threshold it there, not before."""
    volume64 = np.asarray(volume64, dtype=np.float32)
    if volume64.shape != MODEL_SHAPE:
        raise LungsegInputError(f"from_model_grid: expected a {MODEL_SHAPE} volume, got {volume64.shape}.")
    return resample(volume64, grid.affine, grid.source_affine, grid.source_shape,
                    order=order, cval=0.0, smooth=False)


def round_trip_mask(mask: np.ndarray, affine: np.ndarray, ct_hu: np.ndarray | None = None,
                    threshold: float = 0.5) -> np.ndarray:
    """The reference mask taken to the model grid and back (uint8, input grid): the
    *resolution ceiling*, the best any 64^3 model can do on this scan. The cube is placed as
    for the CT (from ``ct_hu`` if given, else centred on the mask)."""
    centre = None if ct_hu is not None else bbox_centre_mm(mask > 0, affine)
    grid = make_model_grid(np.asarray(mask if ct_hu is None else ct_hu), affine, centre)
    return (from_model_grid(mask_to_model_grid(mask, grid), grid) >= threshold).astype(np.uint8)
