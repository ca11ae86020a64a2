"""The boundary rule's thresholds, chosen out of fold (``lungseg refine-hu``).

The inference pipeline redraws the network's lung boundary from the image
(:func:`lungseg_utils.inference.masks_from_prob64`). On a scan's own, finer grid a voxel
within about 5 mm of the boundary is lung if darker than
:data:`~lungseg_utils.inference.REFINE_HU`. On the 64^3, 5 mm course grid the network draws
the boundary a little inside the experts' (their masks call a voxel lung when more than half
of it is), so the voxels just outside it darker than
:data:`~lungseg_utils.inference.REFINE_HU_MODEL_GRID` are added. This study chooses both
thresholds among a few candidates by the Dice of the members that never saw a case, and says
how much of the gain survives choosing without the case (nested: each fold's threshold chosen
on the other folds' cases)::

    lungseg refine-hu results/reference     # -> results/reference/refine.json

``tests/test_refine_choice.py`` checks that the constants are the choices the stored file makes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .. import config, dataio, experiments, geometry, inference, metrics, preprocess, synthetic
from ..errors import LungsegInputError
from ..runs.command import run_command

#: The thresholds tried on each grid (HU); None: the network's boundary as drawn.
CANDIDATES_HU = {"grid64": (None, -450.0, -400.0, -350.0, -300.0, -250.0, -200.0),
                 "native": (None, -350.0, -300.0, -250.0, -200.0, -150.0)}
#: The constant each grid's choice is for.
CONSTANTS = {"grid64": "REFINE_HU_MODEL_GRID", "native": "REFINE_HU"}


def score_candidates(run_dir, data_dir, candidates) -> list[dict]:
    """Every out-of-fold job of ``run_dir`` on the cases of ``data_dir``, its boundary
    refined with each of ``candidates``.

    Returns one row per case: ``{"case_id", "fold", "dice": {label(candidate): Dice}}``."""
    jobs = experiments.out_of_fold_jobs(run_dir)
    if not experiments.jobs_are_out_of_fold(run_dir, jobs):
        raise LungsegInputError(f"{run_dir}: its models saw the cases they would score.")
    forwards, rows = {}, []
    for case_id, fold, model_path in jobs:
        case = dataio.load_case(Path(data_dir) / case_id)
        ct64, grid = geometry.to_model_grid(case.ct_hu, case.affine)
        prob64, _ = inference.predict_prob64(experiments.model_forward(model_path, forwards),
                                             preprocess.window_normalise(ct64))
        dice, body = {}, None
        for hu in candidates:
            out = inference.masks_from_prob64(prob64, grid, case.ct_hu, refine=hu is not None,
                                              body=body, refine_hu=hu)
            body, dice[label(hu)] = out["body"], metrics.dice(out["mask"], case.mask)
        rows.append({"case_id": case_id, "fold": fold, "dice": dice})
    return rows


def label(hu) -> str:
    """A candidate's key in the result file: "none" or the HU as text ("-300")."""
    return "none" if hu is None else f"{hu:g}"


def best(rows: list[dict]) -> str:
    """The candidate with the highest mean Dice over ``rows`` (ties: the first listed)."""
    keys = list(rows[0]["dice"])
    means = [np.mean([r["dice"][k] for r in rows]) for k in keys]
    return keys[int(np.argmax(means))]


def choose(rows: list[dict]) -> dict:
    """The choice and what it is worth: ``{"choice", "mean": {candidate: mean Dice},
    "worst": {...}, "nested_mean_dice", "none_mean_dice", "nested_choices"}``. Nested: each
    fold's cases scored with the candidate chosen on the other folds' cases."""
    keys = list(rows[0]["dice"])
    nested, choices = [], {}
    for fold in sorted({r["fold"] for r in rows}):
        pick = best([r for r in rows if r["fold"] != fold])
        choices[fold] = pick
        nested += [r["dice"][pick] for r in rows if r["fold"] == fold]
    return {"choice": best(rows),
            "mean": {k: float(np.mean([r["dice"][k] for r in rows])) for k in keys},
            "worst": {k: float(np.min([r["dice"][k] for r in rows])) for k in keys},
            "nested_mean_dice": float(np.mean(nested)), "nested_choices": choices,
            "none_mean_dice": float(np.mean([r["dice"]["none"] for r in rows]))}


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog or "python -m lungseg_utils.study.refine",
        description="Choose the boundary rule's thresholds out of fold and write refine.json "
                    "into the ensemble's folder.")
    p.add_argument("ensemble", metavar="DIR", help="a cross-validated ensemble (e.g. "
                                                   "results/reference)")
    p.add_argument("--data_dir", help="folder of the 64^3 cases (default: found)")
    p.add_argument("--native_dir", help="folder of the native-grid cases (default: found)")
    return p


def run(args) -> int:
    """The command on parsed ``args``; bad input raises."""
    folders = {"grid64": args.data_dir or synthetic.resolve_data_dir(),
               "native": args.native_dir or config.native_data_dir()}
    result = {"run": experiments.run_identity(args.ensemble)}
    for grid, folder in folders.items():
        if folder is None:
            continue
        rows = score_candidates(args.ensemble, folder, CANDIDATES_HU[grid])
        result[grid] = {"constant": CONSTANTS[grid], "candidates_hu":
                        [label(h) for h in CANDIDATES_HU[grid]], **choose(rows), "cases": rows}
        block = result[grid]
        for k, v in block["mean"].items():
            print(f"{grid} {k:>6}: mean Dice {v:.4f} (worst {block['worst'][k]:.4f})")
        print(f"{grid}: choice {block['choice']} HU; nested out of fold "
              f"{block['nested_mean_dice']:.4f} against {block['none_mean_dice']:.4f} unrefined")
    print(f"wrote {dataio.save_json(result, Path(args.ensemble) / 'refine.json', overwrite=True)}")
    return 0


def main(argv=None, prog: str | None = None) -> int:
    """``python -m lungseg_utils.study.refine`` (``lungseg refine-hu``): 0 done, 2 bad input."""
    return run_command(build_parser(prog), run, argv)


if __name__ == "__main__":
    sys.exit(main())
