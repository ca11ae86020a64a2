"""Data augmentation in pure NumPy (the Keras data set that applies it is :mod:`.dataset`).

Every transform takes the CT (float32 (X, Y, Z) in [0, 1], from
:func:`~lungseg_utils.preprocess.window_normalise`) and its mask (uint8 or float (X, Y, Z),
{0, 1}) and returns both transformed *the same way*: shapes kept, the mask still binary,
CT and mask still aligned. Randomness comes from an explicit ``numpy.random.Generator``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .config import AUGMENT_DEFAULTS, HU_WINDOW, MODEL_SPACING_MM
from .errors import LungsegInputError


def _check_pair(ct, mask):
    ct = np.asarray(ct, dtype=np.float32)
    mask = np.asarray(mask)
    if ct.ndim != 3 or ct.shape != mask.shape:
        raise LungsegInputError(
            f"augment: expected CT and mask of the same 3D shape, got {ct.shape} and {mask.shape}.")
    return ct, mask


def random_flip(ct, mask, rng, p: float = 0.5, axes=(0, 1, 2)):
    """Flip along each axis in ``axes`` independently with probability ``p``."""
    ct, mask = _check_pair(ct, mask)
    flip = tuple(a for a in axes if rng.random() < p)
    if flip:
        ct, mask = np.flip(ct, flip), np.flip(mask, flip)
    return np.ascontiguousarray(ct), np.ascontiguousarray(mask)


def random_rot90(ct, mask, rng, p: float = 1.0):
    """With probability ``p``, rotate by 90, 180 or 270 degrees in one of the three planes.

    Rotating a cube keeps its shape; a non-cubic volume is only rotated in a square plane.
    """
    ct, mask = _check_pair(ct, mask)
    if rng.random() >= p:
        return ct, mask
    planes = [pl for pl in ((0, 1), (0, 2), (1, 2)) if ct.shape[pl[0]] == ct.shape[pl[1]]]
    if not planes:
        return ct, mask
    plane = planes[rng.integers(len(planes))]
    k = int(rng.integers(1, 4))
    return (np.ascontiguousarray(np.rot90(ct, k, plane)),
            np.ascontiguousarray(np.rot90(mask, k, plane)))


def intensity_jitter(ct, rng, p: float = 0.5, sigma: float = 0.03):
    """With probability ``p``, add Gaussian noise (std ``sigma``) to the [0, 1] CT, clip to [0, 1]."""
    ct = np.asarray(ct, dtype=np.float32)
    if rng.random() >= p or sigma <= 0:
        return ct
    noise = rng.standard_normal(ct.shape, dtype=np.float32)
    return np.clip(ct + np.float32(sigma) * noise, 0.0, 1.0)


def elastic_field(shape, rng, sigma_mm: float = 3.0, smooth_mm: float = 40.0,
                  spacing_mm: float = 5.0) -> np.ndarray:
    """A smooth random displacement field, in voxels.

    White noise smoothed by a Gaussian of std ``smooth_mm`` (in the Fourier domain, so with
    periodic boundaries, which a stationary random field does not mind), scaled so that the
    largest displacement length is ``sigma_mm``. Returns float32 (3, X, Y, Z): the
    displacement along each axis, in voxels of ``spacing_mm``.
    """
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
                   spacing_mm: float = 5.0, field=None):
    """Warp CT and mask by one smooth displacement field (see :func:`elastic_field`).

    CT: trilinear, outside the volume = 0 (air). Mask: trilinear then thresholded at 0.5, so
    it stays binary. ``field`` (3, X, Y, Z), if given, is used instead of a random one.
    Returns (ct float32, mask of the input's dtype).
    """
    ct, mask = _check_pair(ct, mask)
    if field is None:
        field = elastic_field(ct.shape, rng, sigma_mm, smooth_mm, spacing_mm)
    grid = np.indices(ct.shape, dtype=np.float32)
    coords = grid + field
    ct_w = ndi.map_coordinates(ct, coords, order=1, mode="constant", cval=0.0)
    m_w = ndi.map_coordinates(mask.astype(np.float32), coords, order=1, mode="constant", cval=0.0)
    return ct_w.astype(np.float32), (m_w >= 0.5).astype(mask.dtype)


def random_shift(ct, mask, rng, max_shift_vox: int = 4, p: float = 1.0):
    """With probability ``p``, translate by up to ``max_shift_vox`` whole voxels along each axis.

    Voxels shifted in are air: 0.0 in the normalised CT, 0 in the mask. Teaches the model
    that the lungs need not sit at the centre of the grid (a grid centred from the image
    rather than from the label is off by a few voxels).
    """
    ct, mask = _check_pair(ct, mask)
    if rng.random() >= p or max_shift_vox <= 0:
        return ct, mask
    shift = rng.integers(-max_shift_vox, max_shift_vox + 1, size=3)
    out_ct, out_mask = np.zeros_like(ct), np.zeros_like(mask)
    src = tuple(slice(max(0, -s), n - max(0, s)) for s, n in zip(shift, ct.shape))
    dst = tuple(slice(max(0, s), n - max(0, -s)) for s, n in zip(shift, ct.shape))
    out_ct[dst], out_mask[dst] = ct[src], mask[src]
    return out_ct, out_mask


def random_affine(ct, mask, rng, max_rot_deg: float = 10.0, max_scale: float = 0.1):
    """Rotate about each axis by up to ``max_rot_deg`` and scale by 1 ± ``max_scale``, about
    the volume's centre (different scanners, patient positions and body sizes).

    CT: trilinear, air (0.0) outside; mask: trilinear then >= 0.5. Returns (ct, mask).
    """
    ct, mask = _check_pair(ct, mask)
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
                     gamma: float = 0.2, hu_window=HU_WINDOW):
    """Another scanner's calibration: HU' = s * HU + o (s in 1 ± ``hu_scale``, o in
    ± ``hu_offset``), then a gamma in [1 / (1 + ``gamma``), 1 + ``gamma``] on the [0, 1] CT."""
    lo, hi = float(hu_window[0]), float(hu_window[1])
    hu = np.asarray(ct, np.float32) * (hi - lo) + lo
    hu = hu * rng.uniform(1.0 - hu_scale, 1.0 + hu_scale) + rng.uniform(-hu_offset, hu_offset)
    x = np.clip((hu - lo) / (hi - lo), 0.0, 1.0)
    g = np.exp(rng.uniform(-np.log1p(gamma), np.log1p(gamma)))
    return (x ** g).astype(np.float32)


def random_blur(ct, rng, max_sigma_vox: float = 1.0, max_thick: int = 3):
    """A softer reconstruction kernel (Gaussian blur, sigma up to ``max_sigma_vox`` along
    each axis) and, half the time, thicker slices (a box average of 2..``max_thick`` voxels
    along the head-foot axis 2)."""
    ct = np.asarray(ct, np.float32)
    out = ndi.gaussian_filter(ct, rng.uniform(0.0, max_sigma_vox, size=3), mode="nearest")
    if max_thick >= 2 and rng.random() < 0.5:
        out = ndi.uniform_filter1d(out, int(rng.integers(2, max_thick + 1)), axis=2,
                                   mode="nearest")
    return out.astype(np.float32)


def random_z_crop(ct, mask, rng, max_margin_vox: int = 4):
    """A scan framed tightly around the lungs: everything more than 0..``max_margin_vox``
    voxels above the lungs' top or below their base (axis 2) becomes air, as in a scan whose
    field of view ends there. Returns (ct, mask)."""
    ct, mask = _check_pair(ct, mask)
    zs = np.flatnonzero(np.asarray(mask).any(axis=(0, 1)))
    if zs.size == 0:
        return ct, mask
    lo = max(zs[0] - int(rng.integers(0, max_margin_vox + 1)), 0)
    hi = zs[-1] + 1 + int(rng.integers(0, max_margin_vox + 1))
    ct, mask = ct.copy(), mask.copy()
    ct[:, :, :lo], ct[:, :, hi:] = 0.0, 0.0
    mask[:, :, :lo], mask[:, :, hi:] = 0, 0
    return ct, mask


def augment_pair(x, y, rng, settings: dict | None = None):
    """Apply the same random transform to CT ``x`` and mask ``y``.

    Order: elastic (``p_elastic``), rotation and scaling (``p_affine``), shift (``p_shift``),
    tight z-crop (``p_zcrop``), flips (``p_flip``), rot90 (``p_rot90``), then on the CT only
    calibration (``p_intensity``), blur and thick slices (``p_blur``) and noise
    (``p_jitter``). A transform whose probability is 0 draws no random number, so the
    original project's settings give the same samples as before these were added. ``settings``
    overrides :data:`lungseg_utils.config.AUGMENT_DEFAULTS` (extra keys are ignored, so a
    whole profile can be passed). x, y: (X, Y, Z) or (X, Y, Z, 1). Returns (float32 x, y of y's dtype), same shapes.
    """
    s = {**AUGMENT_DEFAULTS, **(settings or {})}
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    channel = x.ndim == 4
    if channel:
        x, y = x[..., 0], y[..., 0]
    drawn = lambda key: s[key] > 0 and rng.random() < s[key]  # noqa: E731
    if rng.random() < s["p_elastic"]:
        x, y = elastic_deform(x, y, rng, s["elastic_sigma_mm"], s["elastic_smooth_mm"],
                              MODEL_SPACING_MM)
    if drawn("p_affine"):
        x, y = random_affine(x, y, rng, s["max_rot_deg"], s["max_scale"])
    x, y = random_shift(x, y, rng, int(s["max_shift_vox"]), p=s["p_shift"])
    if drawn("p_zcrop"):
        x, y = random_z_crop(x, y, rng, int(s["zcrop_margin_vox"]))
    x, y = random_flip(x, y, rng, s["p_flip"])
    x, y = random_rot90(x, y, rng, s["p_rot90"])
    if drawn("p_intensity"):
        x = random_intensity(x, rng, s["hu_offset"], s["hu_scale"], s["gamma"])
    if drawn("p_blur"):
        x = random_blur(x, rng, s["max_blur_vox"], int(s["max_thick"]))
    x = intensity_jitter(x, rng, s["p_jitter"], s["jitter_sigma"])
    if channel:
        x, y = x[..., None], y[..., None]
    return x, y
