"""Data augmentation in pure NumPy (the Keras data set that applies it is :mod:`.dataset`).

Each transform takes the CT (float32 (X, Y, Z) in [0, 1]) and its mask (uint8 or float
(X, Y, Z), {0, 1}), applies itself with probability ``p`` using an explicit
``numpy.random.Generator``, and returns both transformed the same way: shapes kept, the mask
binary. :data:`PIPELINE` lists the steps of :func:`augment_pair`, in order."""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
from scipy import ndimage as ndi

from .config import DEFAULTS, HU_WINDOW, MODEL_SPACING_MM
from .errors import LungsegInputError


def _chance(rng, p: float) -> bool:
    """True with probability ``p``; draws no random number when ``p`` is 0."""
    return p > 0 and rng.random() < p


def _check_pair(ct, mask):
    ct, mask = np.asarray(ct, dtype=np.float32), np.asarray(mask)
    if ct.ndim != 3 or ct.shape != mask.shape:
        raise LungsegInputError(
            f"augment: expected CT and mask of the same 3D shape, got {ct.shape} and {mask.shape}.")
    return ct, mask


def random_flip(ct, mask, rng, p: float = 0.5, axes=(0, 1, 2)):
    """Flip along each axis in ``axes`` independently with probability ``p``."""
    ct, mask = _check_pair(ct, mask)
    flip = tuple(a for a in axes if rng.random() < p)
    return np.ascontiguousarray(np.flip(ct, flip)), np.ascontiguousarray(np.flip(mask, flip))


def random_rot90(ct, mask, rng, p: float = 1.0):
    """With probability ``p``, rotate by 90, 180 or 270 degrees in one of the square planes."""
    ct, mask = _check_pair(ct, mask)
    planes = [pl for pl in ((0, 1), (0, 2), (1, 2)) if ct.shape[pl[0]] == ct.shape[pl[1]]]
    if rng.random() >= p or not planes:
        return ct, mask
    plane = planes[rng.integers(len(planes))]
    k = int(rng.integers(1, 4))
    return (np.ascontiguousarray(np.rot90(ct, k, plane)),
            np.ascontiguousarray(np.rot90(mask, k, plane)))


def intensity_jitter(ct, rng, sigma: float = 0.03, p: float = 0.5):
    """With probability ``p``, add Gaussian noise (std ``sigma``) to the CT, clipped to [0, 1]."""
    ct = np.asarray(ct, dtype=np.float32)
    if rng.random() >= p or sigma <= 0:
        return ct
    noise = rng.standard_normal(ct.shape, dtype=np.float32)
    return np.clip(ct + np.float32(sigma) * noise, 0.0, 1.0)


def elastic_field(shape, rng, sigma_mm: float = 3.0, smooth_mm: float = 40.0,
                  spacing_mm: float = 5.0) -> np.ndarray:
    """A smooth random displacement field: white noise smoothed by a Gaussian of std
    ``smooth_mm`` (in the Fourier domain), scaled so that the longest displacement is
    ``sigma_mm``. Returns float32 (3, X, Y, Z), in voxels of ``spacing_mm``."""
    shape = tuple(int(s) for s in shape)
    s_vox = smooth_mm / spacing_mm
    noise = rng.standard_normal((3, *shape))
    freqs = np.meshgrid(*[np.fft.fftfreq(n) for n in shape[:-1]], np.fft.rfftfreq(shape[-1]),
                        indexing="ij")
    transfer = np.exp(-2.0 * np.pi ** 2 * s_vox ** 2 * sum(f ** 2 for f in freqs))
    field = np.fft.irfftn(np.fft.rfftn(noise, axes=(1, 2, 3)) * transfer, s=shape, axes=(1, 2, 3))
    length = np.sqrt((field ** 2).sum(axis=0)).max()
    field *= (sigma_mm / spacing_mm) / max(length, 1e-12)
    return field.astype(np.float32)


def elastic_deform(ct, mask, rng, sigma_mm: float = 3.0, smooth_mm: float = 40.0,
                   spacing_mm: float = MODEL_SPACING_MM, field=None, p: float = 1.0):
    """With probability ``p``, warp CT and mask by a smooth displacement field (``field``
    (3, X, Y, Z), else :func:`elastic_field`): trilinear, air (0.0) outside; the mask then
    thresholded at 0.5. Returns (ct float32, mask of the input's dtype)."""
    ct, mask = _check_pair(ct, mask)
    if rng.random() >= p:
        return ct, mask
    if field is None:
        field = elastic_field(ct.shape, rng, sigma_mm, smooth_mm, spacing_mm)
    coords = np.indices(ct.shape, dtype=np.float32) + field
    warp = lambda v: ndi.map_coordinates(v, coords, order=1, mode="constant",  # noqa: E731
                                         cval=0.0)
    return warp(ct).astype(np.float32), (warp(mask.astype(np.float32)) >= 0.5).astype(mask.dtype)


def random_shift(ct, mask, rng, max_shift_vox: int = 4, p: float = 1.0):
    """With probability ``p``, translate by up to ``max_shift_vox`` whole voxels along each
    axis; voxels shifted in are air (0.0 in the CT, 0 in the mask)."""
    ct, mask = _check_pair(ct, mask)
    if rng.random() >= p or max_shift_vox <= 0:
        return ct, mask
    max_shift_vox = int(max_shift_vox)
    shift = rng.integers(-max_shift_vox, max_shift_vox + 1, size=3)
    out_ct, out_mask = np.zeros_like(ct), np.zeros_like(mask)
    src = tuple(slice(max(0, -s), n - max(0, s)) for s, n in zip(shift, ct.shape))
    dst = tuple(slice(max(0, s), n - max(0, -s)) for s, n in zip(shift, ct.shape))
    out_ct[dst], out_mask[dst] = ct[src], mask[src]
    return out_ct, out_mask


def random_affine(ct, mask, rng, max_rot_deg: float = 10.0, max_scale: float = 0.1, p: float = 1.0):
    """With probability ``p``, rotate about each axis by up to ``max_rot_deg`` and scale by
    1 ± ``max_scale`` about the centre; trilinear, air outside, the mask then >= 0.5."""
    ct, mask = _check_pair(ct, mask)
    if not _chance(rng, p):
        return ct, mask
    angles = np.deg2rad(rng.uniform(-max_rot_deg, max_rot_deg, size=3))
    scale = rng.uniform(1.0 - max_scale, 1.0 + max_scale)
    matrix = np.eye(3)
    for axis, a in enumerate(angles):
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i] = r[j, j] = np.cos(a)
        r[i, j], r[j, i] = -np.sin(a), np.sin(a)
        matrix = matrix @ r
    matrix /= scale                                   # output voxel -> input voxel
    centre = (np.array(ct.shape) - 1) / 2.0
    offset = centre - matrix @ centre
    warp = lambda v: ndi.affine_transform(v, matrix, offset, order=1, mode="constant",  # noqa: E731
                                          cval=0.0, prefilter=False)
    return warp(ct).astype(np.float32), (warp(mask.astype(np.float32)) >= 0.5).astype(mask.dtype)


def random_intensity(ct, rng, hu_offset: float = 50.0, hu_scale: float = 0.1,
                     gamma: float = 0.2, hu_window=HU_WINDOW, p: float = 1.0):
    """With probability ``p``, another scanner's calibration: HU' = s * HU + o (s in 1 ±
    ``hu_scale``, o in ± ``hu_offset``), then a gamma in [1 / (1 + ``gamma``), 1 + ``gamma``]."""
    if not _chance(rng, p):
        return np.asarray(ct, np.float32)
    lo, hi = float(hu_window[0]), float(hu_window[1])
    hu = np.asarray(ct, np.float32) * (hi - lo) + lo
    hu = hu * rng.uniform(1.0 - hu_scale, 1.0 + hu_scale) + rng.uniform(-hu_offset, hu_offset)
    x = np.clip((hu - lo) / (hi - lo), 0.0, 1.0)
    g = np.exp(rng.uniform(-np.log1p(gamma), np.log1p(gamma)))
    return (x ** g).astype(np.float32)


def random_blur(ct, rng, max_sigma_vox: float = 1.0, max_thick: int = 3, p: float = 1.0):
    """With probability ``p``, a Gaussian blur (sigma up to ``max_sigma_vox`` per axis) and, half
    the time, thicker slices (a box average of 2..``max_thick`` voxels along axis 2)."""
    ct = np.asarray(ct, np.float32)
    if not _chance(rng, p):
        return ct
    max_thick = int(max_thick)
    out = ndi.gaussian_filter(ct, rng.uniform(0.0, max_sigma_vox, size=3), mode="nearest")
    if max_thick >= 2 and rng.random() < 0.5:
        out = ndi.uniform_filter1d(out, int(rng.integers(2, max_thick + 1)), axis=2, mode="nearest")
    return out.astype(np.float32)


def random_z_crop(ct, mask, rng, max_margin_vox: int = 4, p: float = 1.0):
    """With probability ``p``, a scan framed tightly around the lungs: everything more than
    0..``max_margin_vox`` voxels above their top or below their base (axis 2) becomes air."""
    ct, mask = _check_pair(ct, mask)
    zs = np.flatnonzero(mask.any(axis=(0, 1)))             # the slices with lung
    if not _chance(rng, p) or zs.size == 0:
        return ct, mask
    max_margin_vox = int(max_margin_vox)
    lo = max(zs[0] - int(rng.integers(0, max_margin_vox + 1)), 0)
    hi = zs[-1] + 1 + int(rng.integers(0, max_margin_vox + 1))
    ct, mask = ct.copy(), mask.copy()
    ct[:, :, :lo], ct[:, :, hi:] = 0.0, 0.0
    mask[:, :, :lo], mask[:, :, hi:] = 0, 0
    return ct, mask


class Step(NamedTuple):
    """One step of :data:`PIPELINE`: ``transform(ct, mask, rng, *settings[keys], p=settings[p])``
    on CT and mask, or with ``ct_only`` ``transform(ct, rng, ...)`` on the CT alone."""

    name: str
    transform: Callable
    p: str                         # the settings key of its probability
    keys: tuple[str, ...] = ()     # the settings keys of its other arguments, in order
    ct_only: bool = False


#: The augmentation, in order. A new step is a transform above, an entry here and its defaults
#: in config.DEFAULTS.
PIPELINE = [
    Step("elastic", elastic_deform, "p_elastic", ("elastic_sigma_mm", "elastic_smooth_mm")),
    Step("rotate and scale", random_affine, "p_affine", ("max_rot_deg", "max_scale")),
    Step("shift", random_shift, "p_shift", ("max_shift_vox",)),
    Step("tight z-crop", random_z_crop, "p_zcrop", ("zcrop_margin_vox",)),
    Step("flip each axis", random_flip, "p_flip"),
    Step("rot90", random_rot90, "p_rot90"),
    Step("HU calibration", random_intensity, "p_intensity", ("hu_offset", "hu_scale", "gamma"),
         ct_only=True),
    Step("blur, thick slices", random_blur, "p_blur", ("max_blur_vox", "max_thick"), ct_only=True),
    Step("noise", intensity_jitter, "p_jitter", ("jitter_sigma",), ct_only=True)]

#: The augmentation settings and their defaults: every key a step of :data:`PIPELINE` reads.
AUGMENT_DEFAULTS = {k: DEFAULTS[k] for step in PIPELINE for k in (step.p, *step.keys)}


def augment_pair(x, y, rng, settings: dict | None = None):
    """The steps of :data:`PIPELINE`, in order, on CT ``x`` and mask ``y`` (X, Y, Z) or
    (X, Y, Z, 1). ``settings`` (a whole profile will do) overrides :data:`AUGMENT_DEFAULTS`.
    The original five steps (elastic, shift, flips, rot90, noise) draw their random number even
    at probability 0, the other four do not. Returns (float32 x, y of y's dtype), same shapes.
    """
    s = {**AUGMENT_DEFAULTS, **(settings or {})}
    x, y = np.asarray(x, dtype=np.float32), np.asarray(y)
    channel = x.ndim == 4
    if channel:
        x, y = x[..., 0], y[..., 0]
    for step in PIPELINE:
        args = [s[key] for key in step.keys]
        if step.ct_only:
            x = step.transform(x, rng, *args, p=s[step.p])
        else:
            x, y = step.transform(x, y, rng, *args, p=s[step.p])
    if channel:
        x, y = x[..., None], y[..., None]
    return x, y


def pipeline_rows(settings: dict | None = None) -> list[dict]:
    """:data:`PIPELINE` with the values of ``settings`` (over the defaults), one row a step:
    ``{"step", "transform", "probability", "settings", "applies to"}``."""
    s = {**AUGMENT_DEFAULTS, **(settings or {})}
    return [{"step": step.name, "transform": step.transform.__name__,
             "probability": f"{step.p}={s[step.p]}",
             "settings": ", ".join(f"{key}={s[key]}" for key in step.keys) or "-",
             "applies to": "CT" if step.ct_only else "CT and mask"} for step in PIPELINE]
