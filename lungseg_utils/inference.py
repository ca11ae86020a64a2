"""Prediction on any scan and test-time augmentation (TTA); the command is in :mod:`.segment`.

The flow for one scan: CT (any grid) -> model grid (64^3, 5 mm, centred from the image) ->
[0, 1] window -> network (optionally on the 8 flips, averaged) -> 64^3 probability -> back to
the input's grid -> threshold -> (optional) post-processing -> NIfTI with the input's affine.
``python -m lungseg_utils.inference`` runs the command (:mod:`lungseg_utils.scan.segment`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import anatomy, config, geometry, dataio, preprocess
from .errors import LungsegInputError

#: The 8 flip combinations of the three axes (the first is the identity).
FLIPS = [tuple(a for a, f in zip(range(3), bits) if f) for bits in itertools.product((0, 1), repeat=3)]
MODEL_FILE = "best_model.keras"
MANIFEST = "manifest.json"


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
    """Members of an ensemble and its manifest (``folder/manifest.json``: ``members``, a list
    of ``{"file", "fold", "train", "test", "sha256"}``, plus the settings they share)."""

    members: list
    manifest: dict
    folder: Path

    def __len__(self):
        return len(self.members)


def _load_keras(path: Path):
    import zipfile

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


def check_member(path: Path, sha256: str | None, manifest_path: Path) -> None:
    """Refuse a member file whose SHA-256 is not the one its manifest records (a file swapped
    or damaged after the ensemble was made): the results would be another model's."""
    if sha256 is None:
        raise LungsegInputError(f"{manifest_path}: records no sha256 for {path.name}; "
                                "the member cannot be checked.")
    if dataio.file_sha256(path) != sha256:
        raise LungsegInputError(f"{path}: its SHA-256 differs from the one {manifest_path} "
                                "records (the file was replaced or damaged); restore it or "
                                "make the ensemble's manifest again.")


def member_files(path=None) -> list[Path]:
    """The ``.keras`` files of a model (default: the reference): one file, or an ensemble's
    members in its manifest's order, each checked by :func:`check_member`."""
    path = resolve_model_path(path)
    if not path.is_dir():
        return [path]
    members = dataio.load_json(path / MANIFEST).get("members", [])
    if not members:
        raise LungsegInputError(f"{path / MANIFEST}: lists no members.")
    files = [resolve_model_path(path / m["file"]) for m in members]
    for member, file in zip(members, files):
        check_member(file, member.get("sha256"), path / MANIFEST)
    return files


def load_model(path=None):
    """Load the model: one ``.keras`` file (a Keras model) or an ensemble folder (an
    :class:`Ensemble` of :func:`member_files`); default: the reference."""
    path = resolve_model_path(path)
    models = [_load_keras(f) for f in member_files(path)]
    return Ensemble(models, dataio.load_json(path / MANIFEST), path) if path.is_dir() else models[0]


def compiled_forward(model, members: bool = False):
    """A fast forward function ``f(x: float32 (b, 64, 64, 64, 1)) -> ndarray``.

    ``model``: a Keras model or an :class:`Ensemble`, whose members' probabilities are
    averaged in the same compiled graph: half the time of ``model.predict``, which sets up a
    data pipeline on every call. Falls back to ``predict_on_batch`` on other backends.

    ``members=True`` returns each member's probability, stacked: (M, b, 64, 64, 64, 1), at
    the same cost; :func:`predict_prob64` averages them and can return them too.
    """
    keras = config.import_keras_quietly()
    models = model.members if isinstance(model, Ensemble) else [model]

    def mean(x):   # a named function, not lambdas: AutoGraph reads its source without a warning
        stacked = keras.ops.stack([m(x, training=False) for m in models])
        return stacked if members else keras.ops.mean(stacked, axis=0)

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        fn = tf.function(mean, reduce_retracing=True, jit_compile=False)
        return lambda x: np.asarray(fn(np.asarray(x, np.float32)))
    if backend == "jax":
        import jax

        @jax.jit
        def fn(states, x):
            outs = [m.stateless_call(tv, ntv, x, training=False)[0]
                    for m, (tv, ntv) in zip(models, states)]
            return jax.numpy.stack(outs) if members else sum(outs) / len(outs)

        def states():                  # the variables' current arrays, read at call time
            return [([v.value for v in m.trainable_variables],
                     [v.value for v in m.non_trainable_variables]) for m in models]

        return lambda x: np.asarray(fn(states(), np.asarray(x, np.float32)))
    stack = lambda x: np.stack([np.asarray(m.predict_on_batch(np.asarray(x, np.float32)))  # noqa: E731
                                for m in models])
    return stack if members else (lambda x: stack(x).mean(axis=0))


def flip_tta(forward, x64: np.ndarray, flips=FLIPS, batch_size: int = 8) -> np.ndarray:
    """Test-time augmentation by flips: flip the input, predict, flip the prediction back.

    ``forward``: batch float32 (b, 64, 64, 64, 1) -> probabilities (b, 64, 64, 64, 1), or
    (M, b, 64, 64, 64, 1) for the M members of an ensemble (``compiled_forward(...,
    members=True)``). ``x64``: float32 (64, 64, 64). ``flips``: axes to flip, one tuple per
    variant (:data:`FLIPS`: all 8). The flipped inputs go through ``forward`` ``batch_size``
    at a time. Returns float32 (variants, M, 64, 64, 64), M = 1 for a forward that returns
    one probability; :func:`predict_prob64` averages it.
    """
    inputs = np.stack([np.flip(x64, f) for f in flips])[..., None]          # every flip
    outputs = [np.asarray(forward(inputs[i:i + batch_size]))[..., 0]       # predict
               for i in range(0, len(inputs), batch_size)]
    preds = np.concatenate([o if o.ndim == 5 else o[None] for o in outputs], axis=1)
    back = [np.flip(preds[:, v], [a + 1 for a in f]) for v, f in enumerate(flips)]  # flip back
    return np.stack(back).astype(np.float32)


def predict_prob64(forward, x64: np.ndarray, tta: bool = False, batch_size: int = 8,
                   return_members: bool = False):
    """Network probability on the model grid.

    Parameters
    ----------
    forward : callable from :func:`compiled_forward` (or a Keras model); with
        ``members=True`` there, its members' probabilities are averaged here
    x64 : float32 (64, 64, 64) or (64, 64, 64, 1), windowed to [0, 1]
    tta : average over the 8 flip combinations (:func:`flip_tta`)
    return_members : also return each member's probability (TTA-averaged), float32
        (M, 64, 64, 64); M = 1 for a forward that averages its members itself

    Returns
    -------
    prob : float32 (64, 64, 64); std : float32 (64, 64, 64), the voxel-wise standard deviation
    over the TTA variants (zeros without TTA); with ``return_members``, the members' probabilities.
    """
    if not callable(forward):
        raise LungsegInputError("predict_prob64: forward must be callable.")
    x = np.asarray(x64, np.float32)
    x = x[..., 0] if x.ndim == 4 else x
    preds = flip_tta(forward, x, FLIPS if tta else [()], batch_size)  # (variants, M, 64, 64, 64)
    ensemble = preds.mean(axis=1)                   # the members' mean, one per variant
    prob, std = ensemble.mean(axis=0), ensemble.std(axis=0)
    return (prob, std, preds.mean(axis=0)) if return_members else (prob, std)


#: HU below which a voxel near the predicted boundary counts as lung (see refine_boundary).
#: Both thresholds are chosen out of fold by :mod:`lungseg_utils.study.refine`
#: (``refine.json`` of the reference).
REFINE_HU = -200.0
#: On the model grid itself: HU below which a voxel just outside the network's boundary is
#: lung (see :func:`masks_from_prob64`).
REFINE_HU_MODEL_GRID = -300.0


def boundary_band64(prob64: np.ndarray, grid, threshold: float = 0.5) -> np.ndarray:
    """Voxels of the input grid within about one model voxel (5 mm) of the predicted boundary.

    Computed on the 64^3 grid (the thick boundary of the thresholded probability,
    :func:`lungseg_utils.anatomy.boundary`) and carried back like the probability: far cheaper than distance
    transforms on a 256 x 256 x 150 scan. Returns bool with the input's shape.
    """
    band64 = anatomy.boundary(np.asarray(prob64) >= threshold, mode="thick")
    return geometry.from_model_grid(band64.astype(np.float32), grid) >= 0.5


def refine_boundary(mask: np.ndarray, prob: np.ndarray, ct_hu: np.ndarray, band: np.ndarray,
                    refine_hu: float = REFINE_HU, min_prob: float = 0.01) -> np.ndarray:
    """Redraw the lung boundary at the input's own resolution, guided by the image.

    A 5 mm model grid cannot place a boundary finer than 5 mm, and the network's nearly
    binary probability carries little sub-voxel information back. Inside ``band`` (voxels
    near the boundary, :func:`boundary_band64`) a voxel is lung if it is darker than
    ``refine_hu`` and the network gave it at least ``min_prob``; elsewhere ``mask`` stands.
    The threshold marks where partial-volume voxels between aerated lung (about -850 HU) and
    the chest wall stop being lung in the LCTSC contours (chosen out of fold among -350 to
    -150 HU by :mod:`lungseg_utils.study.refine`).

    mask uint8, prob float32, ct_hu, band bool: same shape (X, Y, Z). Returns uint8.
    """
    refined = np.where(band, (np.asarray(ct_hu) < refine_hu) & (prob >= min_prob), mask > 0)
    return refined.astype(np.uint8)


def predict_volume(forward, ct_hu: np.ndarray, affine: np.ndarray, tta: bool = False,
                   threshold: float = 0.5, postprocess: bool = False, refine: bool = True,
                   hu_window=config.HU_WINDOW, centre_mm=None, members: bool = False,
                   body=None) -> dict:
    """Segment the lungs of one CT on its own grid.

    With ``refine`` (default) the boundary is redrawn from the image by
    :func:`refine_boundary` (see :func:`masks_from_prob64`). ``postprocess`` keeps the one or two largest components and
    fills holes (:func:`lungseg_utils.anatomy.postprocess_lungs`). ``centre_mm`` places the
    model cube at that world point instead of the lungs' centre estimated from the image.

    Returns a dict: ``prob`` float32 (input shape) the lung probability, ``mask`` uint8 (input
    shape; inside the body, see :func:`masks_from_prob64`), ``mask_network`` uint8 the
    thresholded probability before refinement, ``body`` bool the body mask,
    ``prob64`` and ``std64`` float32 (64, 64, 64) on the model grid, ``ct64`` the model-grid
    CT in HU, ``grid`` the :class:`~lungseg_utils.geometry.ModelGrid`; with ``members``
    (``forward`` from ``compiled_forward(..., members=True)``) also ``members64`` float32
    (M, 64, 64, 64), each member's probability.
    """
    ct64, grid = geometry.to_model_grid(ct_hu, affine, centre_mm)
    x64 = preprocess.window_normalise(ct64, hu_window)
    prob64, std64, members64 = predict_prob64(forward, x64, tta=tta, return_members=True)
    out = masks_from_prob64(prob64, grid, ct_hu, threshold, refine, body)
    if members:
        out["members64"] = members64
    if postprocess:
        out["mask"] = anatomy.postprocess_lungs(out["mask"], axis=geometry.axial_axis(affine))
    return {**out, "prob64": prob64, "std64": std64, "ct64": ct64, "grid": grid}


#: Predicted lung totalling less than this (mL) is no lung at all: a scan without lungs in
#: view (the abdomen below them, say) gets an empty mask rather than bowel gas called lung.
MIN_LUNG_ML = 100.0


def masks_from_prob64(prob64, grid, ct_hu, threshold: float = 0.5, refine: bool = True,
                      body=None, refine_hu: float | None = None) -> dict:
    """The model-grid probability back on the input's grid, thresholded and (with
    ``refine``) its boundary redrawn from the image.

    On a grid finer than the model's, a voxel within about 5 mm of the boundary is lung if
    darker than ``refine_hu`` (default :data:`REFINE_HU`); on the model grid itself, a voxel
    just outside the boundary (the network draws it a little inside the course masks') if
    darker than ``refine_hu`` (default :data:`REFINE_HU_MODEL_GRID`): mostly air, so lung.

    The mask is then kept to the patient's body (``body``: bool, the input's shape, as
    :func:`lungseg_utils.anatomy.body_mask` gives it; computed here when None): the network
    sees only a 64^3 cube and can call the air around a patient, or a scan of air, lung.
    Less than :data:`MIN_LUNG_ML` left means no lungs in view: an empty mask.

    Returns ``{"prob", "mask_network", "mask", "body"}`` with the input's shape (see
    :func:`predict_volume`)."""
    prob = geometry.from_model_grid(prob64, grid)
    mask_network = (prob >= threshold).astype(np.uint8)
    mask = mask_network
    if refine and grid.passthrough:
        mask = refine_boundary(mask_network, prob, ct_hu,
                               anatomy.boundary(mask_network, mode="outer"),
                               REFINE_HU_MODEL_GRID if refine_hu is None else refine_hu)
    elif refine:
        mask = refine_boundary(mask_network, prob, ct_hu, boundary_band64(prob64, grid, threshold),
                               REFINE_HU if refine_hu is None else refine_hu)
    affine = grid.source_affine
    if body is None:
        body = anatomy.body_mask(ct_hu, axis=geometry.axial_axis(affine))
    mask = (mask.astype(bool) & body).astype(np.uint8)
    if mask.sum() * geometry.voxel_volume_ml(affine) < MIN_LUNG_ML:
        mask = np.zeros_like(mask)
    return {"prob": prob, "mask_network": mask_network, "mask": mask, "body": body}


if __name__ == "__main__":
    # ``python -m lungseg_utils.inference`` runs the command, which lives one level up in
    # :mod:`.segment` (it imports this module; importing it here would be a cycle).
    import runpy

    runpy.run_module("lungseg_utils.scan.segment", run_name="__main__", alter_sys=True)
