"""Prediction on any scan, test-time augmentation (TTA), and the inference command.

The flow for one scan: CT (any grid) -> model grid (64^3, 5 mm, centred from the image) ->
[0, 1] window -> network (optionally on the 8 flips, averaged) -> 64^3 probability -> back to
the input's grid -> threshold -> (optional) post-processing -> NIfTI with the input's affine.

Command line (``python -m lungseg_utils.inference --help``)::

    python -m lungseg_utils.inference --input patient_001/ --output_mask pred.nii.gz
    python -m lungseg_utils.inference --input ct.nii.gz --output_mask m.nii.gz --output_prob p.nii.gz --tta
    python -m lungseg_utils.inference --input patients/ --output_dir predictions/ --postprocess
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from . import anatomy, config, geometry, io, preprocess, quality
from .errors import LungsegInputError

#: The 8 flip combinations of the three axes (the first is the identity).
FLIPS = [tuple(a for a, f in zip(range(3), bits) if f) for bits in itertools.product((0, 1), repeat=3)]
MODEL_FILE = "best_model.keras"
#: The inference command predicts up to this many scans eagerly, more through a traced graph
#: (:func:`compiled_forward`): measured on an AVX2 CPU with the three-member reference, the
#: trace costs 3.5 s once and saves about 0.9 s a scan.
EAGER_MAX_SCANS = 3
MANIFEST = "manifest.json"


def resolve_model_path(path=None) -> Path:
    """The model to use: a ``.keras`` file, an ensemble folder (holding ``manifest.json``),
    or a run folder holding ``best_model.keras``; default: the reference (results/reference)."""
    path = Path(path) if path else config.REFERENCE_DIR
    if path.is_dir() and not (path / MANIFEST).exists():
        path = path / MODEL_FILE
    if not path.exists():
        raise LungsegInputError(f"{path}: model file is missing (train one with "
                                "python -m lungseg_utils.train, or use results/reference/).")
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
    keras = config.import_keras_quietly()
    from . import unet  # noqa: F401  (registers the losses and metrics)

    try:
        return keras.saving.load_model(path, compile=False)
    except (OSError, ValueError) as exc:
        raise LungsegInputError(f"{path}: could not be loaded as a Keras model ({exc}).") from None


def load_model(path=None):
    """Load the model: one ``.keras`` file (a Keras model) or an ensemble folder (an
    :class:`Ensemble`, its members loaded in the manifest's order); default: the reference."""
    path = resolve_model_path(path)
    if path.is_dir():
        manifest = io.load_json(path / MANIFEST)
        files = [path / m["file"] for m in manifest.get("members", [])]
        if not files:
            raise LungsegInputError(f"{path / MANIFEST}: lists no members.")
        return Ensemble([_load_keras(resolve_model_path(f)) for f in files], manifest, path)
    return _load_keras(path)


def compiled_forward(model, compile: bool = True, members: bool = False):
    """A fast forward function ``f(x: float32 (b, 64, 64, 64, 1)) -> ndarray``.

    ``model``: a Keras model or an :class:`Ensemble`, whose members' probabilities are
    averaged in the same compiled graph. ``model.predict`` sets up a data pipeline on every
    call (0.67 s for one volume here); a direct call under the backend's compiler takes
    half that (0.31 s). Falls back to ``predict_on_batch`` on other backends.

    ``compile=False`` calls the members eagerly instead: no graph is traced, which costs
    seconds before the first prediction (3.5 s for the three-member reference on an AVX2
    CPU) but saves a little on every later call, so it pays for a process that predicts
    only a few volumes (the inference command on one scan) and not for a long one.

    ``members=True`` returns each member's probability, stacked: (M, b, 64, 64, 64, 1), at
    the same cost; :func:`predict_prob64` averages them and can return them too.
    """
    keras = config.import_keras_quietly()
    models = model.members if isinstance(model, Ensemble) else [model]
    reduce = (lambda t: t) if members else (lambda t: keras.ops.mean(t, axis=0))  # noqa: E731
    mean = lambda x: reduce(keras.ops.stack(  # noqa: E731
        [m(x, training=False) for m in models]))
    if not compile:
        return lambda x: np.asarray(mean(np.asarray(x, np.float32)))
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


def predict_prob64(forward, x64: np.ndarray, tta: bool = False, batch_size: int = 8,
                   return_members: bool = False):
    """Network probability on the model grid.

    Parameters
    ----------
    forward : callable from :func:`compiled_forward` (or a Keras model); with
        ``members=True`` there, its members' probabilities are averaged here
    x64 : float32 (64, 64, 64) or (64, 64, 64, 1), windowed to [0, 1]
    tta : average over the 8 flip combinations (each prediction flipped back first)
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
    flips = FLIPS if tta else [()]
    batch = np.stack([np.flip(x, f) if f else x for f in flips])[..., None]
    outs = []
    for i in range(0, len(batch), batch_size):
        out = np.asarray(forward(batch[i:i + batch_size]))[..., 0]
        outs.append(out if out.ndim == 5 else out[None])        # (M, b, 64, 64, 64)
    preds = np.concatenate(outs, axis=1)
    preds = np.stack([np.flip(p, tuple(a + 1 for a in f)) if f else p  # p: (M, 64, 64, 64)
                      for p, f in zip(preds.swapaxes(0, 1), flips)],
                     axis=1).astype(np.float32)                  # (M, variants, 64, 64, 64)
    per_variant = preds.mean(axis=0)
    prob, std = per_variant.mean(axis=0), per_variant.std(axis=0)
    return (prob, std, preds.mean(axis=1)) if return_members else (prob, std)


#: HU below which a voxel near the predicted boundary counts as lung (see refine_boundary).
REFINE_HU = -200.0


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
    the chest wall stop being lung in the LCTSC contours (chosen on the reference model's
    training cases; -300 and -400 HU gave lower Dice there).

    mask uint8, prob float32, ct_hu, band bool: same shape (X, Y, Z). Returns uint8.
    """
    refined = np.where(band, (np.asarray(ct_hu) < refine_hu) & (prob >= min_prob), mask > 0)
    return refined.astype(np.uint8)


def predict_volume(forward, ct_hu: np.ndarray, affine: np.ndarray, tta: bool = False,
                   threshold: float = 0.5, postprocess: bool = False, refine: bool = True,
                   hu_window=config.HU_WINDOW, centre_mm=None, members: bool = False) -> dict:
    """Segment the lungs of one CT on its own grid.

    With ``refine`` (default) and an input finer than the model grid, the boundary is
    redrawn at the input's resolution by :func:`refine_boundary`; a 64^3, 5 mm input is left
    as the network drew it. ``postprocess`` keeps the one or two largest components and
    fills holes (:func:`lungseg_utils.anatomy.postprocess_lungs`). ``centre_mm`` places the
    model cube at that world point instead of the lungs' centre estimated from the image.

    Returns a dict: ``prob`` float32 (input shape) the lung probability, ``mask`` uint8 (input
    shape), ``mask_network`` uint8 the thresholded probability before refinement,
    ``prob64`` and ``std64`` float32 (64, 64, 64) on the model grid, ``ct64`` the model-grid
    CT in HU, ``grid`` the :class:`~lungseg_utils.geometry.ModelGrid`; with ``members``
    (``forward`` from ``compiled_forward(..., members=True)``) also ``members64`` float32
    (M, 64, 64, 64), each member's probability.
    """
    ct64, grid = geometry.to_model_grid(ct_hu, affine, centre_mm)
    x64 = preprocess.window_normalise(ct64, hu_window)
    prob64, std64, members64 = predict_prob64(forward, x64, tta=tta, return_members=True)
    out = masks_from_prob64(prob64, grid, ct_hu, threshold, refine)
    if members:
        out["members64"] = members64
    if postprocess:
        out["mask"] = anatomy.postprocess_lungs(out["mask"], axis=io.axial_axis(affine))
    return {**out, "prob64": prob64, "std64": std64, "ct64": ct64, "grid": grid}


def masks_from_prob64(prob64, grid, ct_hu, threshold: float = 0.5, refine: bool = True) -> dict:
    """The model-grid probability back on the input's grid, thresholded and (with
    ``refine``, on a grid finer than the model's) its boundary redrawn from the image.

    Returns ``{"prob", "mask_network", "mask"}`` with the input's shape (see
    :func:`predict_volume`)."""
    prob = geometry.from_model_grid(prob64, grid)
    mask_network = (prob >= threshold).astype(np.uint8)
    mask = mask_network
    if refine and not grid.passthrough:
        mask = refine_boundary(mask_network, prob, ct_hu, boundary_band64(prob64, grid, threshold))
    return {"prob": prob, "mask_network": mask_network, "mask": mask}


def predict_case(case, model=None, forward=None, **kwargs) -> dict:
    """:func:`predict_volume` for a :class:`~lungseg_utils.io.Case` or a path (file or folder)."""
    if not isinstance(case, io.Case):
        ct, affine, header = io.load_ct(case)
        case = io.Case(Path(case).name, ct, None, affine, io.spacing_from_affine(affine), Path(case), header)
    if forward is None:
        forward = compiled_forward(model if model is not None else load_model())
    return predict_volume(forward, case.ct_hu, case.affine, **kwargs)


# ----------------------------------------------------------------------------- command line

def _is_dicom_scan(folder: Path) -> bool:
    """A folder (any depth) of DICOM files, and not a folder of NIfTI patient folders."""
    from .dicom import is_dicom_file

    if any((p / io.CT_NAME).exists() for p in folder.iterdir() if p.is_dir()):
        return False
    return any(p.is_file() and is_dicom_file(p) for p in folder.rglob("*"))


def _jobs(input_path: Path, output_mask, output_prob, output_dir, output_json=None) -> list[tuple]:
    """(name, scan path, mask out, prob out, summary out) for a file, a patient folder, a
    folder of DICOM files (one scan) or a folder of patients."""
    if not input_path.exists():
        raise LungsegInputError(f"{input_path}: input does not exist.")
    if (input_path.is_file() or (input_path / io.CT_NAME).exists()
            or _is_dicom_scan(input_path)):
        if not output_mask:
            raise LungsegInputError(f"{input_path}: a single scan needs --output_mask FILE.")
        scan = input_path / io.CT_NAME if (input_path / io.CT_NAME).exists() else input_path
        return [(input_path.name, scan, Path(output_mask), Path(output_prob) if output_prob else None,
                 Path(output_json) if output_json else None)]
    out = Path(output_dir or output_mask or "")
    if not str(out) or out.suffix in (".gz", ".nii"):
        raise LungsegInputError(f"{input_path}: a folder of patients needs --output_dir FOLDER.")
    cases = io.discover_cases(input_path, require_mask=False)
    return [(c.name, c / io.CT_NAME, out / c.name / "lung_pred.nii.gz",
             out / c.name / "lung_prob.nii.gz" if output_prob or output_dir else None,
             out / c.name / "lung_summary.json") for c in cases]


SUMMARY_CSV = "lung_summary.csv"
CSV_COLUMNS = ("case", "lung_volume_ml", "right_lung_ml", "left_lung_ml", "right_fraction",
               "members_agreement", "baseline_agreement", "flag", "reasons", "seconds", "mask")


def _model_info(path) -> dict:
    """What the summary says about the model: its path and its (manifest's) sha256."""
    resolved = resolve_model_path(path)
    file = resolved / MANIFEST if resolved.is_dir() else resolved
    return {"path": str(resolved), "sha256": io.file_sha256(file),
            "members": len(io.load_json(file).get("members", [])) if resolved.is_dir() else 1}


def write_summary_csv(summaries: list[dict], path: Path, overwrite: bool = False) -> Path:
    """One row per scan (:data:`CSV_COLUMNS`) of the folder mode's summaries, written atomically."""
    import csv

    with io.atomic_write(path, overwrite=overwrite, suffix=".csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            for s in summaries:
                row = {k: s.get(k) for k in CSV_COLUMNS}
                row["flag"], row["reasons"] = s["quality"]["flag"], "; ".join(s["quality"]["reasons"])
                writer.writerow(row)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lungseg_utils.inference",
        description="Segment both lungs in chest CT with a trained lungseg 3D U-Net. Any scan "
                    "works (any size, voxel spacing, orientation): it is taken to the 64^3 "
                    "model grid centred from the image, predicted, and the probability is "
                    "brought back to the input's own grid, so the written masks have exactly "
                    "the input's shape and affine.",
        epilog="Exit status: 0 all scans done; 1 some scans of a folder failed; 2 bad input.")
    p.add_argument("--model", default=None,
                   help="a .keras file, an ensemble folder (with manifest.json) or a run folder "
                        "holding best_model.keras (default: results/reference)")
    p.add_argument("--input", required=True,
                   help="a CT file (.nii/.nii.gz), a patient folder holding ct.nii.gz, a "
                        "folder of DICOM files (searched at any depth; one CT series is "
                        "read), or a folder of patient folders")
    p.add_argument("--series", default=None,
                   help="DICOM input: the SeriesInstanceUID to read (default: the CT series "
                        "with most slices)")
    p.add_argument("--output_mask", default=None,
                   help="where to write the lung mask (uint8 NIfTI) for a single scan")
    p.add_argument("--output_prob", default=None,
                   help="where to write the lung probability (float32 NIfTI) for a single "
                        "scan; in folder mode, any value turns probability maps on")
    p.add_argument("--output_dir", default=None,
                   help="folder mode: write OUTPUT_DIR/<patient>/lung_pred.nii.gz and "
                        "lung_prob.nii.gz")
    p.add_argument("--output_json", default=None,
                   help="single scan: write a summary (lung volumes right and left, quality "
                        "flag with reasons) to this JSON file; folder mode writes "
                        "OUTPUT_DIR/<patient>/lung_summary.json")
    p.add_argument("--labels", choices=("lung", "lr"), default="lung",
                   help="mask labels: 'lung' 1 = lung (default); 'lr' 1 = right lung, "
                        "2 = left lung (the patient's sides, from the header)")
    p.add_argument("--thr", type=float, default=0.5, help="probability threshold (default 0.5)")
    p.add_argument("--tta", action="store_true",
                   help="average the 8 flip combinations (test-time augmentation)")
    p.add_argument("--postprocess", action="store_true",
                   help="keep the one or two largest components and fill holes")
    p.add_argument("--no_refine", action="store_true",
                   help="keep the boundary as the 5 mm model grid drew it (by default, on a "
                        "scan finer than 5 mm, voxels within 5 mm of the boundary are "
                        f"redrawn: lung if below {REFINE_HU:.0f} HU)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--verbose", action="store_true",
                   help="also say on stderr what start-up and each scan cost ('timing NAME "
                        "SECONDS s' lines: keras_import, model_load, scan)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not 0.0 < args.thr < 1.0:
            raise LungsegInputError(f"--thr {args.thr}: the threshold must lie strictly between 0 and 1.")
        jobs = _jobs(Path(args.input), args.output_mask, args.output_prob, args.output_dir,
                     args.output_json)
        table = [Path(args.output_dir) / SUMMARY_CSV] if args.output_dir else []
        for out in [o for _, _, m, pr, js in jobs for o in (m, pr, js)] + table:
            if out is not None and out.exists() and not args.overwrite:
                raise LungsegInputError(f"{out}: file exists; pass --overwrite to replace it.")
        timing = (lambda name, t0: print(f"timing {name} {time.perf_counter() - t0:.3f} s",
                                         file=sys.stderr)) if args.verbose else (lambda *a: None)
        t0 = time.perf_counter()
        config.import_keras_quietly()
        timing("keras_import", t0)
        t0 = time.perf_counter()
        model = load_model(args.model)
        timing("model_load", t0)
        # Tracing the graph costs more than it saves for a few scans (module docstring).
        forward = compiled_forward(model, compile=len(jobs) > EAGER_MAX_SCANS, members=True)
    except LungsegInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from tqdm.auto import tqdm

    failed, summaries = [], []
    model_info = _model_info(args.model)
    bar = tqdm(jobs, desc="inference", unit="scan", disable=len(jobs) < 2, file=sys.stderr)
    for name, scan_path, mask_out, prob_out, json_out in bar:
        t0 = time.perf_counter()
        try:
            ct, affine, header, info = io.load_scan(scan_path, args.series)
            res = predict_volume(forward, ct, affine, tta=args.tta, threshold=args.thr,
                                 postprocess=args.postprocess, refine=not args.no_refine,
                                 members=True)
            sides = anatomy.split_left_right(
                res["mask"], affine, midline_x_mm=quality.body_midline_x_mm(ct, affine))
            mask = sides if args.labels == "lr" else res["mask"]
            io.save_nifti(mask, affine, mask_out, header=header, overwrite=args.overwrite)
            if prob_out is not None:
                io.save_nifti(res["prob"].astype(np.float32), affine, prob_out, header=header,
                              overwrite=args.overwrite)
            summary = quality.scan_summary(res["mask"], ct, affine, sides, res["members64"])
            summary = {"case": name, "input": {**info, "orientation": "".join(
                           nib.aff2axcodes(affine))}, "model": model_info,
                       "threshold": args.thr, "tta": args.tta, "labels": args.labels,
                       "mask": str(mask_out), **summary,
                       "seconds": round(time.perf_counter() - t0, 2)}
            if json_out is not None:
                io.save_json(summary, json_out, overwrite=args.overwrite)
            summaries.append(summary)
            timing("scan", t0)
        except LungsegInputError as exc:
            failed.append(name)
            print(f"error: {exc}", file=sys.stderr)
            continue
        flag = summary["quality"]
        msg = (f"{name}: lung volume {summary['lung_volume_ml']:.0f} mL (right "
               f"{summary['right_lung_ml']:.0f}, left {summary['left_lung_ml']:.0f}), quality "
               f"{flag['flag']}{': ' + '; '.join(flag['reasons']) if flag['reasons'] else ''}, "
               f"{time.perf_counter() - t0:.2f} s -> {mask_out}")
        (bar.write(msg) if len(jobs) > 1 else print(msg))
    if args.output_dir and summaries:
        write_summary_csv(summaries, Path(args.output_dir) / SUMMARY_CSV, overwrite=args.overwrite)
    if failed:
        if len(jobs) > 1:
            print(f"{len(failed)} of {len(jobs)} scans failed: {', '.join(failed)}", file=sys.stderr)
        return 1 if len(failed) < len(jobs) else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
