"""Experiments: methods compared on labelled cases, cross-validation, out-of-fold scoring.

Everything here combines the pipeline's steps (inference, anatomy, metrics, training) into
the results that notebooks 05 and 06 show and the report prints; the result JSONs are built
here, in one place, and :mod:`lungseg_utils.report` only reads them.

Command line: ``python -m lungseg_utils.experiments cv --k 3 [--publish results/reference/cv]``
runs k-fold cross-validation of one training configuration.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

from . import anatomy, config, geometry, inference, io, metrics, synthetic, train
from .errors import LungsegInputError


def compare_methods(forward, case, tta: bool = False, with_ceiling: bool = False):
    """Segment one labelled case with every method and score each against its mask.

    Methods: ``unet`` (the inference pipeline: the network's probability thresholded at 0.5
    on the case's own grid, its boundary redrawn at that grid's resolution where it is finer
    than 5 mm), ``unet_raw`` (without that refinement), ``unet_post`` (``unet`` after
    :func:`lungseg_utils.anatomy.postprocess_lungs`), ``baseline`` (:func:`lungseg_utils.anatomy.classical_lung_mask`)
    and, with ``with_ceiling``, ``ceiling`` (the reference mask taken to the model grid and
    back: the best any 64^3 model can do on this grid).

    Parameters
    ----------
    forward : callable from :func:`lungseg_utils.inference.compiled_forward`
    case : :class:`lungseg_utils.io.Case` with a mask

    Returns
    -------
    row : dict ``{"case_id", method: evaluate_masks(...) for each method}``
    masks : dict method -> uint8 mask on the case's grid
    prediction : the dict of :func:`lungseg_utils.inference.predict_volume`
    """
    if case.mask is None:
        raise LungsegInputError(f"{case.path}: compare_methods needs a case with a lung mask.")
    axis = io.axial_axis(case.affine)
    pred = inference.predict_volume(forward, case.ct_hu, case.affine, tta=tta)
    masks = {"unet": pred["mask"],
             "unet_post": anatomy.postprocess_lungs(pred["mask"], axis=axis),
             "unet_raw": pred["mask_network"],
             "baseline": anatomy.classical_lung_mask(case.ct_hu, case.spacing_mm, axis=axis)}
    if with_ceiling:
        masks["ceiling"] = geometry.round_trip_mask(case.mask, case.affine, ct_hu=case.ct_hu)
    row = {"case_id": case.case_id}
    row.update({m: metrics.evaluate_masks(mask, case.mask, case.spacing_mm) for m, mask in masks.items()})
    return row, masks, pred


def summarise_methods(rows: list[dict], methods, keys=("dice", "iou", "hd95_mm", "assd_mm",
                                                       "volume_error_pct")) -> dict:
    """``{method: {metric: summarise(...)}}`` over rows of :func:`compare_methods`."""
    out = {}
    for m in methods:
        flat = [{"case_id": r["case_id"], **r[m]} for r in rows]
        out[m] = {k: metrics.summarise(flat, k) for k in keys}
    return out


def out_of_fold_jobs(reference_dir, max_cases: int | None = None) -> list[tuple]:
    """Which model may score which case: ``[(case_id, source, model_path), ...]``.

    If ``reference_dir/cv/fold_*/`` holds cross-validation runs (``split.json`` and
    ``best_model.keras``), every case of a fold's test part is paired with that fold's model
    (all cases, each scored by the one model that never saw it). Otherwise the reference
    model is paired with its own split's test cases. Sorted by case id; the first
    ``max_cases`` if given.
    """
    reference_dir = Path(reference_dir)
    jobs = []
    for fold in sorted((reference_dir / "cv").glob("fold_*")):
        if (fold / "split.json").exists() and (fold / "best_model.keras").exists():
            jobs += [(cid, f"CV {fold.name.replace('_', ' ')}", fold / "best_model.keras")
                     for cid in io.load_json(fold / "split.json")["test"]]
    if not jobs:
        split = io.load_json(reference_dir / "split.json")
        jobs = [(cid, "reference", reference_dir / "best_model.keras") for cid in split["test"]]
    jobs.sort(key=lambda j: j[0])
    return jobs[:max_cases] if max_cases else jobs


def promote_run(run_dir, reference_dir=None, overwrite: bool = False,
                include_final: bool = True) -> Path:
    """Copy a finished run's artifacts to ``results/reference/`` (the default model).

    Refuses to replace an existing reference unless ``overwrite``. Records where the
    reference came from in ``provenance.json``. ``include_final=False`` leaves out
    ``final_model.keras`` (22 MB at base 16) where only the best model is needed. Returns the
    reference folder.
    """
    run_dir = Path(run_dir)
    reference_dir = Path(reference_dir or config.REFERENCE_DIR)
    missing = [a for a in train.RUN_ARTIFACTS if not (run_dir / a).exists()]
    if missing:
        raise LungsegInputError(f"{run_dir}: not a finished run (missing {', '.join(missing)}).")
    if (reference_dir / "best_model.keras").exists() and not overwrite:
        raise LungsegInputError(f"{reference_dir}: a reference model exists; pass "
                                "overwrite=True to replace it.")
    reference_dir.mkdir(parents=True, exist_ok=True)
    for name in train.RUN_ARTIFACTS:
        if include_final or name != "final_model.keras":
            with io.atomic_write(reference_dir / name, overwrite=True) as tmp:
                shutil.copyfile(run_dir / name, tmp)
    io.save_json({"promoted_from": run_dir.name}, reference_dir / "provenance.json",
                 overwrite=True)
    return reference_dir


def cross_validate(k: int = 3, data_dir=None, out_dir=None, profile=None, seed: int = 42,
                   verbose=0, publish_dir=None, **overrides) -> dict:
    """k-fold cross-validation of one configuration: an honest estimate on every case.

    The cases are split into ``k`` seeded folds; fold i is the test part of run i, one
    seeded case of the rest is its validation case, the others train. Each run is a normal
    run folder under ``out_dir/fold_i/`` (default ``results/cv/``). Every case is then
    predicted by the one model that never saw it and scored with
    :func:`lungseg_utils.metrics.evaluate_masks` on the 64^3 grid.

    Returns (and writes to ``out_dir/cross_validation.json``) ``{"folds", "profile",
    "settings", "cases": [{"case_id", "fold", metrics...}], "summary": {metric: summary}}``.
    With ``publish_dir`` (e.g. ``results/reference/cv``), each fold's artifacts are also
    copied to ``publish_dir/fold_i/`` (:func:`promote_run`) with the JSON beside them.
    """
    data_dir = Path(data_dir) if data_dir else synthetic.resolve_data_dir()
    out_root = Path(out_dir) if out_dir else config.RESULTS_DIR / "cv"
    ids = [p.name for p in io.discover_cases(data_dir)]
    if not 2 <= k <= len(ids) // 2:
        raise LungsegInputError(f"cross_validate: k={k} needs 2 <= k <= {len(ids) // 2} for {len(ids)} cases.")
    rng = np.random.default_rng(seed)
    order = [ids[i] for i in rng.permutation(len(ids))]
    folds = [sorted(order[i::k]) for i in range(k)]
    rows, settings = [], None
    for i, test in enumerate(folds):
        rest = [c for c in ids if c not in test]
        val = [rest[int(rng.integers(len(rest)))]]
        split = {"seed": seed, "train": [c for c in rest if c not in val], "val": val, "test": test}
        run_dir = train.train(data_dir, out_dir=out_root / f"fold_{i}", profile=profile, split=split,
                        verbose=verbose, **overrides)
        settings = io.load_json(run_dir / "train_config.json")["settings"]
        if publish_dir:
            promote_run(run_dir, Path(publish_dir) / f"fold_{i}", overwrite=True,
                        include_final=False)
        forward = inference.compiled_forward(inference.load_model(run_dir / "best_model.keras"))
        for cid in test:
            case = io.load_case(data_dir / cid)
            res = inference.predict_volume(forward, case.ct_hu, case.affine)
            rows.append({"case_id": cid, "fold": i, "run": run_dir.name,
                         **metrics.evaluate_masks(res["mask"], case.mask, case.spacing_mm)})
    rows.sort(key=lambda r: r["case_id"])
    result = {"folds": k, "profile": settings and settings.get("profile"), "settings": settings,
              "cases": rows,
              "summary": {m: metrics.summarise(rows, m)
                          for m in ("dice", "iou", "hd95_mm", "assd_mm", "volume_error_pct")}}
    io.save_json(result, out_root / "cross_validation.json", overwrite=True)
    if publish_dir:
        io.save_json(result, Path(publish_dir) / "cross_validation.json", overwrite=True)
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lungseg_utils.experiments",
                                description="Experiments on the lungseg data.")
    sub = p.add_subparsers(dest="command", required=True)
    cv = sub.add_parser("cv", help="k-fold cross-validation of one training configuration "
                                   "(each case scored by the fold model that never saw it)")
    cv.add_argument("--k", type=int, default=3, help="number of folds (default 3)")
    cv.add_argument("--profile", choices=sorted(config.PROFILES),
                    help="training settings (default: $LUNGSEG_PROFILE or quick)")
    cv.add_argument("--data_dir", help="folder of patient_XXX/{ct,lung}.nii.gz")
    cv.add_argument("--out_dir", help="where the fold runs go (default results/cv)")
    cv.add_argument("--publish", metavar="DIR",
                    help="also copy each fold's artifacts to DIR/fold_i (e.g. results/reference/cv)")
    cv.add_argument("--seed", type=int, default=42, help="seed of the fold assignment")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = cross_validate(args.k, args.data_dir, args.out_dir, args.profile,
                                seed=args.seed, publish_dir=args.publish)
    except LungsegInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    s = result["summary"]["dice"]
    print(f"{args.k}-fold cross-validation: out-of-fold Dice {s['mean']:.4f} ± {s['sd']:.4f}, "
          f"worst {s['worst_value']:.4f} ({s['worst_case_id']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
