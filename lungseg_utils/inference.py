"""Prediction on any scan and test-time augmentation (TTA).

CT (any grid) -> model grid (64^3, 5 mm) -> [0, 1] window -> network (optionally on the 8 flips,
averaged) -> 64^3 probability -> the input's grid -> threshold -> (optional) post-processing.
``python -m lungseg_utils.inference`` runs the command (:mod:`lungseg_utils.scan.segment`)."""

from __future__ import annotations

import itertools
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import anatomy, config, geometry, dataio, preprocess
from .errors import LungsegInputError

#: The 8 flip combinations of the three axes (the first is the identity).
FLIPS = [tuple(a for a, f in zip(range(3), bits) if f) for bits in itertools.product((0, 1), repeat=3)]
MODEL_FILE, MANIFEST = "best_model.keras", "manifest.json"
#: HU below which a voxel near the predicted boundary is lung (:func:`masks_from_prob64`), on
#: a finer grid and on the model grid itself, chosen by :mod:`lungseg_utils.study.refine`.
REFINE_HU, REFINE_HU_MODEL_GRID = -200.0, -300.0
#: Less predicted lung than this (mL) is no lung in view (the abdomen, say): an empty mask.
MIN_LUNG_ML = 100.0


def resolve_model_path(path=None) -> Path:
    """The model to use: a ``.keras`` file, an ensemble folder (holding ``manifest.json``),
    or a run folder holding ``best_model.keras``; default: the reference (results/reference)."""
    path = Path(path) if path else config.REFERENCE_DIR
    if path.is_dir() and not (path / MANIFEST).exists():
        path = path / MODEL_FILE
    if not path.exists():
        raise LungsegInputError(f"{path}: model file is missing (train one with lungseg "
                                "train, or use results/reference/).")
    return path


@dataclass
class Ensemble:
    """An ensemble's Keras models, in its manifest's order (:func:`member_files`)."""

    members: list


def _load_keras(path: Path):
    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        raise LungsegInputError(f"{path}: not a Keras model file (a .keras file is a zip "
                                "archive saved by model.save).")
    keras = config.import_keras_quietly()
    from . import unet  # noqa: F401  (registers the losses and metrics)
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 - OSError, ValueError, KeyError (no config.json), ...
        why = " ".join(str(exc).split())
        raise LungsegInputError(f"{path}: could not be loaded as a Keras model ({why}).") from None


def member_files(path=None) -> list[Path]:
    """The ``.keras`` files of a model (default: the reference): one file, or an ensemble's
    members in its manifest's order, each refused unless its SHA-256 is the manifest's."""
    path = resolve_model_path(path)
    if not path.is_dir():
        return [path]
    manifest = path / MANIFEST
    members = dataio.load_json(manifest).get("members", [])
    if not members:
        raise LungsegInputError(f"{manifest}: lists no members.")
    files = [resolve_model_path(path / m["file"]) for m in members]
    for member, file in zip(members, files):
        if member.get("sha256") is None:
            raise LungsegInputError(f"{manifest}: records no sha256 for {file.name}; "
                                    "the member cannot be checked.")
        if dataio.file_sha256(file) != member["sha256"]:
            raise LungsegInputError(f"{file}: its SHA-256 differs from the one {manifest} "
                                    "records (the file was replaced or damaged); restore it or "
                                    "make the ensemble's manifest again.")
    return files


def load_model(path=None):
    """Load the model: one ``.keras`` file (a Keras model) or an ensemble folder (an
    :class:`Ensemble` of :func:`member_files`); default: the reference."""
    path = resolve_model_path(path)
    models = [_load_keras(f) for f in member_files(path)]
    return Ensemble(models) if path.is_dir() else models[0]


def compiled_forward(model, members: bool = False):
    """A compiled forward function ``f(x: float32 (b, 64, 64, 64, 1)) -> (b, 64, 64, 64, 1)``
    of a Keras model or an :class:`Ensemble` (its members' mean; ``members=True``: stacked,
    (M, b, 64, 64, 64, 1)); ``predict_on_batch`` on backends other than TensorFlow."""
    keras = config.import_keras_quietly()
    models = model.members if isinstance(model, Ensemble) else [model]

    def mean(x):   # a named function, not lambdas: AutoGraph reads its source without a warning
        stacked = keras.ops.stack([m(x, training=False) for m in models])
        return stacked if members else keras.ops.mean(stacked, axis=0)

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        fn = tf.function(mean, reduce_retracing=True, jit_compile=False)
        return lambda x: np.asarray(fn(np.asarray(x, np.float32)))
    stack = lambda x: np.stack([np.asarray(m.predict_on_batch(np.asarray(x, np.float32)))  # noqa: E731
                                for m in models])
    return stack if members else (lambda x: stack(x).mean(axis=0))


def flip_tta(forward, x64: np.ndarray, flips=FLIPS, batch_size: int = 8) -> np.ndarray:
    """Test-time augmentation by flips: flip the input, predict, flip the prediction back.

    ``forward``: float32 (b, 64, 64, 64, 1) -> (b, 64, 64, 64, 1), or (M, b, 64, 64, 64, 1)
    for an ensemble's M members; ``x64``: float32 (64, 64, 64); ``flips``: the axes to flip,
    one tuple per variant (:data:`FLIPS`: all 8), ``batch_size`` at a time through ``forward``.
    Returns float32 (variants, M, 64, 64, 64), M = 1 for a forward that returns one probability.
    """
    inputs = np.stack([np.flip(x64, f) for f in flips])[..., None]          # every flip
    outputs = [np.asarray(forward(inputs[i:i + batch_size]))[..., 0]       # predict
               for i in range(0, len(inputs), batch_size)]
    preds = np.concatenate([o if o.ndim == 5 else o[None] for o in outputs], axis=1)
    back = [np.flip(preds[:, v], [a + 1 for a in f]) for v, f in enumerate(flips)]  # flip back
    return np.stack(back).astype(np.float32)


def predict_prob64(forward, x64: np.ndarray, tta: bool = False, batch_size: int = 8,
                   return_members: bool = False):
    """Network probability on the model grid, with ``tta`` the mean over the 8 flips.

    ``forward``: from :func:`compiled_forward` (with ``members=True``, averaged here);
    ``x64``: float32 (64, 64, 64) or (64, 64, 64, 1), windowed to [0, 1]. Returns ``(prob,
    std)``, float32 (64, 64, 64): the mean and standard deviation over the TTA variants (std
    zeros without TTA); ``return_members`` adds each member's probability, float32
    (M, 64, 64, 64) (M = 1 for a forward that averages its members itself).
    """
    if not callable(forward):
        raise LungsegInputError("predict_prob64: forward must be callable.")
    x = np.asarray(x64, np.float32)
    x = x[..., 0] if x.ndim == 4 else x
    preds = flip_tta(forward, x, FLIPS if tta else [()], batch_size)  # (variants, M, 64, 64, 64)
    ensemble = preds.mean(axis=1)                   # the members' mean, one per variant
    prob, std = ensemble.mean(axis=0), ensemble.std(axis=0)
    return (prob, std, preds.mean(axis=0)) if return_members else (prob, std)


def boundary_band64(prob64: np.ndarray, grid, threshold: float = 0.5) -> np.ndarray:
    """Voxels of the input grid within about one model voxel (5 mm) of the predicted boundary:
    the thick boundary on the 64^3 grid carried back like the probability (bool, input shape)."""
    band64 = anatomy.boundary(np.asarray(prob64) >= threshold, mode="thick")
    return geometry.from_model_grid(band64.astype(np.float32), grid) >= 0.5


def refine_boundary(mask: np.ndarray, prob: np.ndarray, ct_hu: np.ndarray, band: np.ndarray,
                    refine_hu: float = REFINE_HU, min_prob: float = 0.01) -> np.ndarray:
    """Redraw the lung boundary from the image: inside ``band`` (:func:`boundary_band64`) a
    voxel is lung if darker than ``refine_hu`` with ``prob`` at least ``min_prob``; elsewhere
    ``mask`` stands. mask uint8, prob float32, ct_hu, band bool, (X, Y, Z). Returns uint8."""
    refined, box = np.asarray(mask) > 0, anatomy.bounding_box(band)   # work in the band's box
    refined[box] = np.where(band[box], (np.asarray(ct_hu)[box] < refine_hu)
                            & (np.asarray(prob)[box] >= min_prob), refined[box])
    return refined.astype(np.uint8)


def predict_volume(forward, ct_hu: np.ndarray, affine: np.ndarray, tta: bool = False,
                   threshold: float = 0.5, postprocess: bool = False, refine: bool = True,
                   hu_window=config.HU_WINDOW, centre_mm=None, members: bool = False,
                   body=None) -> dict:
    """Segment the lungs of one CT on its own grid.

    ``refine``: see :func:`masks_from_prob64`; ``postprocess``:
    :func:`lungseg_utils.anatomy.postprocess_lungs`; ``centre_mm``: the cube's centre (default:
    the lungs', from the image). Returns :func:`masks_from_prob64`'s dict and, on the model grid,
    ``prob64``, ``std64`` float32 (64, 64, 64), ``ct64`` (HU) and its ``grid``; with ``members``
    (``compiled_forward(..., members=True)``) also ``members64`` float32 (M, 64, 64, 64)."""
    ct64, grid = geometry.to_model_grid(ct_hu, affine, centre_mm)
    x64 = preprocess.window_normalise(ct64, hu_window)
    prob64, std64, members64 = predict_prob64(forward, x64, tta=tta, return_members=True)
    out = masks_from_prob64(prob64, grid, ct_hu, threshold, refine, body)
    if members:
        out["members64"] = members64
    if postprocess:
        out["mask"] = anatomy.postprocess_lungs(out["mask"], axis=geometry.axial_axis(affine))
    return {**out, "prob64": prob64, "std64": std64, "ct64": ct64, "grid": grid}


def masks_from_prob64(prob64, grid, ct_hu, threshold: float = 0.5, refine: bool = True,
                      body=None, refine_hu: float | None = None) -> dict:
    """The model-grid probability on the input's grid, thresholded, and with ``refine`` a voxel
    darker than ``refine_hu`` made lung: within about 5 mm of the boundary on a finer grid
    (default :data:`REFINE_HU`), just outside it on the model grid (:data:`REFINE_HU_MODEL_GRID`).
    The mask is kept to ``body`` (bool, made by :func:`lungseg_utils.anatomy.body_mask` when None)
    and emptied under :data:`MIN_LUNG_ML`. Returns ``{"prob" float32, "mask_network" (it
    thresholded) uint8, "mask" uint8, "body" bool}``, all with the input's shape."""
    prob = geometry.from_model_grid(prob64, grid)
    mask = mask_network = (prob >= threshold).astype(np.uint8)
    if refine:
        band = (anatomy.boundary(mask_network, mode="outer") if grid.passthrough
                else boundary_band64(prob64, grid, threshold))
        default = REFINE_HU_MODEL_GRID if grid.passthrough else REFINE_HU
        mask = refine_boundary(mask_network, prob, ct_hu, band,
                               default if refine_hu is None else refine_hu)
    affine = grid.source_affine
    body = anatomy.body_mask(ct_hu, axis=geometry.axial_axis(affine)) if body is None else body
    mask = (mask.astype(bool) & body).astype(np.uint8)
    if mask.sum() * geometry.voxel_volume_ml(affine) < MIN_LUNG_ML:
        mask = np.zeros_like(mask)
    return {"prob": prob, "mask_network": mask_network, "mask": mask, "body": body}


if __name__ == "__main__":   # the command: scan.segment, which imports this module
    import runpy
    runpy.run_module("lungseg_utils.scan.segment", run_name="__main__", alter_sys=True)
