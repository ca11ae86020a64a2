"""Analytic chest phantoms with exact lung masks, for fast tests and the demo fallback.

A phantom is drawn in world millimetres, so the same anatomy can be sampled on any grid (shape,
voxel size, axis order): a body with a fat rim, two lungs with a vessel-like texture, a spine,
a couch, noise and air around. The lung mask is exact on the voxel centres."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import config
from .config import MODEL_SHAPE, MODEL_SPACING_MM
from .geometry import lps_affine
from .dataio import CT_NAME, MASK_NAME, save_nifti


def make_phantom(shape=MODEL_SHAPE, spacing_mm=(MODEL_SPACING_MM,) * 3, seed: int = 0,
                 affine: np.ndarray | None = None, body_width_mm: float = 340.0,
                 noise_hu: float = 20.0):
    """Draw a chest phantom on a grid of ``shape`` with ``spacing_mm`` (voxel size per axis).

    ``seed`` varies the anatomy slightly (lung size and position) and the noise; ``affine``
    (4, 4, voxel -> world) defaults to L, P, S centred on the world origin; a body wider than
    about 320 mm (``body_width_mm``) is cut at its sides by a 64^3, 5 mm grid, as in the course
    data. Returns (ct_hu float32 (X, Y, Z), exact lung mask uint8 (X, Y, Z), affine (4, 4))."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    affine = lps_affine(shape, spacing_mm) if affine is None else affine
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    x, y, z = (affine[:3, :3] @ idx + affine[:3, 3:4]).reshape((3,) + shape)   # world mm, RAS+
    jitter = rng.uniform(-1, 1, size=6)
    a_body, b_body = body_width_mm / 2.0, 120.0 + 10 * jitter[0]
    body = (x / a_body) ** 2 + (y / b_body) ** 2 <= 1.0
    fat = body & ((x / (a_body - 12)) ** 2 + (y / (b_body - 12)) ** 2 > 1.0)
    lungs = np.zeros(shape, bool)
    for side in (-1, 1):
        cx = side * (70.0 + 5 * jitter[1])
        r = np.array([55.0 + 5 * jitter[2], 75.0 + 5 * jitter[3], 110.0 + 10 * jitter[4]])
        lungs |= ((x - cx) / r[0]) ** 2 + ((y + 5.0) / r[1]) ** 2 + ((z - 10 * jitter[5]) / r[2]) ** 2 <= 1.0
    lungs &= body
    spine = ((x / 18.0) ** 2 + ((y + 85.0) / 18.0) ** 2 <= 1.0) & body
    couch = (np.abs(y + b_body + 14.0) <= 6.0) & (np.abs(x) <= 230.0)
    ct = np.full(shape, -1000.0, np.float32)
    for region, hu in ((body, 40.0), (fat, -100.0), (couch, 200.0), (lungs, -850.0)):
        ct[region] = hu
    texture = np.sin(x / 7.0) * np.sin(y / 9.0) * np.sin(z / 11.0)
    ct[lungs] += (60.0 * texture[lungs]).astype(np.float32)
    ct[spine] = 700.0
    ct += rng.normal(0.0, noise_hu, size=shape).astype(np.float32)
    ct = np.clip(ct, -1024.0, 3071.0).astype(np.float32)
    return ct, lungs.astype(np.uint8), affine


def write_demo_dataset(folder, n_cases: int = 6, seed: int = 0, overwrite: bool = False) -> Path:
    """Write ``n_cases`` 64^3 phantoms as ``folder/synth_XXX/{ct,lung}.nii.gz`` (int16 / uint8);
    existing cases are kept unless ``overwrite``. Returns ``folder``."""
    folder = Path(folder)
    for i in range(n_cases):
        case = folder / f"synth_{i:03d}"
        if (case / CT_NAME).exists() and (case / MASK_NAME).exists() and not overwrite:
            continue
        ct, mask, affine = make_phantom(seed=seed + i, body_width_mm=300.0 + 12.0 * i)
        save_nifti(np.round(ct).astype(np.int16), affine, case / CT_NAME, overwrite=True)
        save_nifti(mask, affine, case / MASK_NAME, overwrite=True)
    return folder


def resolve_data_dir(verbose: bool = True) -> Path:
    """The folder of cases (:func:`lungseg_utils.config.find_data_dir`), else a demo set:
    synthetic phantoms written to ``data/synthetic/`` (kept if already there), the substitution
    announced loudly, since results on them say nothing about real CT."""
    if (found := config.find_data_dir()) is not None:
        return found
    folder = write_demo_dataset(config.SYNTHETIC_DIR)
    if verbose:
        print("!" * 72, f"!! NO REAL DATA FOUND: using SYNTHETIC phantoms from {folder}",
              "!! Results below say nothing about real CT. See data/README.md.", "!" * 72, sep="\n")
    return folder
