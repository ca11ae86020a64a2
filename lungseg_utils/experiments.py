"""Experiments: methods compared on labelled cases, scored out of fold (notebooks 05, 06).

Builds ``evaluation.json`` and ``tta.json`` on the two grids of :data:`GRIDS`, which the
report checks as it reads them (:mod:`lungseg_utils.report.schema`)."""

from __future__ import annotations

import timeit
from functools import partial
from pathlib import Path

import numpy as np

from . import anatomy, config, geometry, inference, dataio, metrics
from .errors import LungsegInputError

#: The grids results are given on: key in the result files -> label in tables and figures.
GRIDS = {"grid64": "64³", "native": "native"}
#: The methods in each grid's block of ``evaluation.json`` (on 64³ the ceiling is the reference).
GRID_METHODS = {"grid64": ("unet_raw", "unet", "unet_post", "baseline"),
                "native": ("unet_raw", "unet", "unet_post", "baseline", "ceiling")}
#: How the methods are named in tables and figures (notebook 05, the report, the README).
METHOD_LABELS = {"unet_raw": "U-Net, 5 mm edge", "unet": "U-Net",
                 "unet_post": "U-Net + post-processing", "baseline": "Classical baseline",
                 "ceiling": "Resolution ceiling",
                 # the robustness suite's U-Net columns (lungseg_utils.study.robustness):
                 "member": "U-Net, the member that never saw the case",
                 "ensemble_oof": "U-Net, members that never saw the case, averaged",
                 "ensemble_all": "U-Net, all members averaged (some trained on the case)"}
#: The keys of every row of ``tta.json``'s ``cases``.
TTA_ROW_KEYS = ("case_id", "grid", "dice_single", "dice_tta", "hd95_single_mm", "hd95_tta_mm")


def compare_methods(forward, case, with_ceiling: bool = False):
    """Segment one labelled ``Case`` with every method below and score each; ``unet_raw`` is
    the mask before its boundary is redrawn on grids finer than 5 mm, ``ceiling``
    (``with_ceiling``) the reference taken to the model grid and back: the best any 64^3 model
    can do. Returns ``(row, masks, prediction)``: ``{"case_id", method: evaluate_masks(...)}``,
    ``{method: uint8 mask on the case's grid}`` and ``predict_volume``'s dict."""
    if case.mask is None:
        raise LungsegInputError(f"{case.path}: compare_methods needs a case with a lung mask.")
    axis = geometry.axial_axis(case.affine)
    pred = inference.predict_volume(forward, case.ct_hu, case.affine)
    masks = {"unet": pred["mask"],
             "unet_post": anatomy.postprocess_lungs(pred["mask"], axis=axis),
             "unet_raw": pred["mask_network"],
             "baseline": anatomy.classical_lung_mask(case.ct_hu, case.spacing_mm, axis=axis)}
    if with_ceiling:
        masks["ceiling"] = geometry.round_trip_mask(case.mask, case.affine, ct_hu=case.ct_hu)
    scores = {m: metrics.evaluate_masks(mask, case.mask, case.spacing_mm)
              for m, mask in masks.items()}
    return {"case_id": case.case_id, **scores}, masks, pred


def summarise_methods(rows: list[dict], methods, keys=tuple(metrics.METRICS)) -> dict:
    """``{method: {metric: summarise(...)}}`` over rows of :func:`compare_methods`."""
    flat = {m: [{"case_id": r["case_id"], **r[m]} for r in rows] for m in methods}
    return {m: {k: metrics.summarise(flat[m], k) for k in keys} for m in methods}


def out_of_fold_jobs(run_dir, max_cases: int | None = None) -> list[tuple]:
    """Which model may score which case: ``[(case_id, source, model_path), ...]``, sorted by
    case id (the first ``max_cases``). An ensemble (``manifest.json``) pairs each case with
    the member whose test fold holds it (``"CV fold i"``); other runs: :func:`reference_jobs`."""
    run_dir = Path(run_dir)
    if (run_dir / inference.MANIFEST).exists():
        manifest = dataio.load_json(run_dir / inference.MANIFEST)
        jobs = [(cid, f"CV fold {m['fold']}", run_dir / m["file"])
                for m in manifest["members"] for cid in m["test"]]
    else:
        jobs = reference_jobs(run_dir)
    jobs.sort(key=lambda j: j[0])
    return jobs[:max_cases] if max_cases else jobs


def jobs_are_out_of_fold(run_dir, jobs) -> bool:
    """True if every job's model is one of ``run_dir``'s and neither trained on nor was chosen
    by its case: its ``split.json`` ``train``, and ``val`` unless that is its test set."""
    run_dir, seen = Path(run_dir), {}
    manifest = run_dir / inference.MANIFEST
    files = ([run_dir / m["file"] for m in dataio.load_json(manifest)["members"]]
             if manifest.exists() else [run_dir / inference.MODEL_FILE])
    for f in files:
        split = dataio.load_json(f.parent / "split.json")
        val = [] if sorted(split["val"]) == sorted(split["test"]) else split["val"]
        seen[f.resolve()] = set(split["train"]) | set(val)
    return all(Path(p).resolve() in seen and cid not in seen[Path(p).resolve()]
               for cid, _, p in jobs)


def reference_jobs(reference_dir=None) -> list[tuple]:
    """The reference model's held-out test cases as jobs: ``[(case_id, "reference", model)]``
    (the same form as :func:`out_of_fold_jobs`), sorted by case id."""
    reference_dir = Path(reference_dir or config.REFERENCE_DIR)
    split = dataio.load_json(reference_dir / "split.json")
    return [(cid, "reference", reference_dir / inference.MODEL_FILE)
            for cid in sorted(split["test"])]


def model_forward(model_path, forwards: dict):
    """The compiled forward pass of ``model_path``, loaded once into ``forwards``."""
    if model_path not in forwards:
        forwards[model_path] = inference.compiled_forward(inference.load_model(model_path))
    return forwards[model_path]


def _job_cases(jobs, folders: dict, forwards: dict | None):
    """``(case_id, model_label, forward, grid, case)`` for every job on each grid with a folder."""
    forwards = {} if forwards is None else forwards
    for cid, label, model_path in jobs:
        fwd = model_forward(model_path, forwards)
        for grid in GRIDS:
            if folders.get(grid) is not None:
                yield cid, label, fwd, grid, dataio.load_case(Path(folders[grid]) / cid)


def method_block(rows: list[dict], grid: str) -> dict:
    """One grid's block of ``evaluation.json``: its :data:`GRID_METHODS`, the rows of
    :func:`compare_methods` and their summaries (``{}`` without rows)."""
    methods = list(GRID_METHODS[grid])
    return {"methods": methods, "cases": rows,
            "summary": summarise_methods(rows, methods) if rows else {}}


def evaluate_jobs(jobs, folders: dict, forwards: dict | None = None) -> dict:
    """Score every job's case (:func:`out_of_fold_jobs`) with every method on both grids:
    ``{grid: method_block(...)}``, each row naming its ``"model"`` (``"CV fold 0"``). ``folders``:
    ``{"grid64": folder, "native": folder or None}``; ``forwards``: a cache of compiled models."""
    rows = {grid: [] for grid in GRIDS}
    for _, label, fwd, grid, case in _job_cases(jobs, folders, forwards):
        row = compare_methods(fwd, case, with_ceiling=grid == "native")[0]
        rows[grid].append({**row, "model": label})
    return {grid: method_block(rows[grid], grid) for grid in GRIDS}


def run_identity(run_dir) -> dict:
    """What a result file records of its run: ``{"run": its portable path, "model_sha256": of
    best_model.keras (an ensemble's member 0's), "manifest_sha256": of manifest.json or None}``."""
    run_dir = Path(run_dir)
    digest = (lambda p: dataio.file_sha256(p) if p.exists() else None)  # noqa: E731
    model = run_dir / inference.MODEL_FILE
    if not model.exists() and (run_dir / inference.MANIFEST).exists():   # member 0's model
        model = run_dir / dataio.load_json(run_dir / inference.MANIFEST)["members"][0]["file"]
    return {"run": dataio.portable_path(run_dir), "model_sha256": digest(model),
            "manifest_sha256": digest(run_dir / inference.MANIFEST)}


def check_identity(result: dict, run_dir, name: str, notebook: str) -> None:
    """Raise unless a result file's ``run`` (if it has one) names the model of ``run_dir``."""
    said, here = result.get("run"), run_identity(run_dir)
    if said and any(said.get(k) != here[k] for k in ("model_sha256", "manifest_sha256")):
        raise LungsegInputError(f"{Path(run_dir) / name}: describes the model of "
                                f"{said.get('run')}, not the one in {here['run']}; re-run "
                                f"notebook {notebook} on this run.")


def optional_result(run_dir, name: str, notebook: str) -> dict | None:
    """A result file a run may have (``robustness.json``, ``seed_spread.json``): its contents,
    checked to describe this run's model (:func:`check_identity`), or None if it is absent."""
    path = Path(run_dir) / name
    if not path.is_file():
        return None
    result = dataio.load_json(path)
    check_identity(result, run_dir, name, notebook)
    return result


def evaluation_result(model_path, test: dict, cv: dict | None = None, run_dir=None,
                      scoring: str = "split") -> dict:
    """The contents of ``evaluation.json``. ``test``: :func:`evaluate_jobs` as ``scoring`` says
    (``"out_of_fold"``, or ``"split"``: one model's test cases); ``cv``: an out-of-fold block
    for a split-scored run (left out if empty); ``run_dir``: adds ``run`` (:func:`run_identity`)."""
    if scoring not in ("split", "out_of_fold"):
        raise LungsegInputError(f"evaluation_result: scoring {scoring!r} is not 'split' or "
                                "'out_of_fold'.")
    result = {"model": dataio.portable_path(model_path), "scoring": scoring,
              "test_cases": [r["case_id"] for r in test["grid64"]["cases"]],
              **({"run": run_identity(run_dir)} if run_dir is not None else {}), **test}
    if cv and cv["grid64"]["cases"]:
        folds = {r["model"] for r in cv["grid64"]["cases"]}
        result["cross_validation"] = {"folds": len(folds), **cv}
    return result


def tta_rows(jobs, folders: dict, forwards: dict | None = None) -> list[dict]:
    """Single pass against 8-flip TTA for every job's case (arguments as in
    :func:`evaluate_jobs`): one row per case and grid, keys :data:`TTA_ROW_KEYS`."""
    rows = []
    for cid, _, fwd, grid, case in _job_cases(jobs, folders, forwards):
        row = {"case_id": cid, "grid": grid}
        for name, flag in (("single", False), ("tta", True)):
            mask = inference.predict_volume(fwd, case.ct_hu, case.affine, tta=flag)["mask"]
            row[f"dice_{name}"] = metrics.dice(mask, case.mask)
            row[f"hd95_{name}_mm"] = metrics.hd95_mm(mask, case.mask, case.spacing_mm)
        rows.append({k: row[k] for k in TTA_ROW_KEYS})
    return rows


def time_inference(forward, x64, repeats: int = 5) -> dict:
    """Median seconds of one prediction on the model grid, single pass and TTA (after a
    warm-up call each): ``{"single": s, "tta": s}``. ``x64``: (64, 64, 64) in [0, 1]."""
    times = {}
    for name, flag in (("single", False), ("tta", True)):
        call = partial(inference.predict_prob64, forward, x64, tta=flag)
        call()                                                           # warm-up
        times[name] = float(np.median(timeit.repeat(call, number=1, repeat=repeats)))
    return times


def method_difference(result: dict, grid: str, a: str = "baseline", b: str = "unet",
                      ci: float = 0.95, seed: int = 0) -> dict:
    """Dice of method ``b`` minus ``a`` on ``evaluation.json``'s ``grid``, paired by case:
    ``metrics.paired_bootstrap_ci``'s interval, ``ci``, ``n`` and ``n_better`` (b higher)."""
    cases = result[grid]["cases"]
    da, db = [c[a]["dice"] for c in cases], [c[b]["dice"] for c in cases]
    return {**metrics.paired_bootstrap_ci(da, db, ci=ci, seed=seed), "ci": ci, "n": len(cases),
            "n_better": int(sum(y > x for x, y in zip(da, db)))}


def tta_gains(rows: list[dict], ci: float = 0.95, seed: int = 0) -> dict:
    """Per grid with two cases or more, TTA's Dice gain over the single pass: the paired
    bootstrap interval (:func:`~lungseg_utils.metrics.paired_bootstrap_ci`) and ``ci``."""
    gains = {}
    for grid in GRIDS:
        sub = [r for r in rows if r["grid"] == grid]
        if len(sub) >= 2:
            single, tta = [r["dice_single"] for r in sub], [r["dice_tta"] for r in sub]
            gains[grid] = {**metrics.paired_bootstrap_ci(single, tta, ci=ci, seed=seed), "ci": ci}
    return gains


def tta_recommendation(tta: dict) -> dict:
    """Whether to run TTA by default: only if ``tta.json``'s native-grid Dice gain has a paired
    interval above zero. ``{"default": bool, "text": one sentence with the numbers}``."""
    g, slow = tta["dice_gain_native"], tta["time_s"]["tta"] / tta["time_s"]["single"]
    gain = f"{g['mean_diff']:+.4f} [{g['lo']:+.4f}, {g['hi']:+.4f}]"
    if g["lo"] > 0:
        return {"default": True, "text": f"TTA raises native-grid Dice by {gain} at {slow:.1f}x "
                                         "the time: worth running by default (--tta)."}
    return {"default": False, "text": f"TTA's native-grid Dice gain {gain} is not above zero, "
                                      f"at {slow:.1f}x the time: leave it off by default and "
                                      "use --tta when the uncertainty map is wanted."}


def tta_result(rows: list[dict], time_s: dict, auc: float, focus_case: str, run_dir=None) -> dict:
    """The contents of ``tta.json``: :func:`tta_rows`, :func:`time_inference`, the uncertainty's
    error AUC on ``focus_case``, :func:`tta_gains` (``dice_gain``: grid64) and ``run``."""
    gains = tta_gains(rows)
    return {**({"run": run_identity(run_dir)} if run_dir is not None else {}), "cases": rows,
            "time_s": time_s, "uncertainty_error_auc": auc, "focus_case": focus_case,
            "dice_gain": gains.get("grid64", {}), "dice_gain_native": gains.get("native", {})}


def save_result(result: dict, name: str, run_dir=None) -> Path:
    """Write a result file into its run (default :func:`~lungseg_utils.config.active_run_dir`);
    under the smoke profile, one about the reference goes to ``config.FIGURES_DIR`` instead."""
    folder = Path(run_dir or config.active_run_dir()).resolve()
    if config.profile_name() == "smoke" and folder == config.REFERENCE_DIR.resolve():
        folder = config.FIGURES_DIR
    return dataio.save_json(result, folder / name, overwrite=True)
