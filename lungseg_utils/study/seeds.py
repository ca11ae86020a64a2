"""Seed spread: how far one training run can be trusted (``lungseg seeds``).

One member of an ensemble is trained again with other seeds — the same cases, split and
settings, only the random initialisation, the augmentation and the sample order differ —
and every run is scored on the member's unseen cases on both grids. The spread of their Dice
is written to the ensemble's ``seed_spread.json``, which notebook 05 and the report read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .. import config, dataio, experiments, inference, metrics, synthetic
from ..errors import LungsegInputError
from ..runs.command import run_command
from ..runs import training

GRIDS = experiments.GRIDS


def train_seeds(ensemble_dir, seeds, fold: int = 0, data_dir=None, out_dir=None,
                verbose=0) -> dict:
    """Train member ``fold`` of an ensemble again with other training seeds: the same cases,
    split and settings (and, for a fine-tuned member, the same starting weights), only the
    seed of the weights, the augmentation and the sample order differ. How far one training run can be trusted is the spread of these runs' Dice on the
    fold's (unseen) test cases (:func:`seed_spread`).

    The new runs go to ``out_dir`` (default ``ensemble_dir/seeds``)``/seed_S/``; the
    member itself is the run of its own seed. Returns ``{seed: run folder}``, sorted.
    """
    folder = Path(ensemble_dir)
    member = dataio.load_json(folder / inference.MANIFEST)["members"][fold]
    run = (folder / member["file"]).parent
    cfg = dataio.load_json(run / "train_config.json")
    settings = {k: v for k, v in cfg["settings"].items() if k != "profile"}
    data_dir = Path(data_dir) if data_dir else config.REPO_ROOT / cfg["data_dir"]
    init = initial_weights(cfg, run)
    runs = {int(member["seed"]): run}
    for seed in seeds:
        if int(seed) not in runs:
            runs[int(seed)] = training.train_run(
                data_dir, out_dir=Path(out_dir or folder / "seeds") / f"seed_{seed}",
                profile=cfg["settings"]["profile"], split=run / "split.json", verbose=verbose,
                init_weights=init, **{**settings, "seed": int(seed)})
    return dict(sorted(runs.items()))


def initial_weights(cfg: dict, run: Path) -> Path | None:
    """The weights a fine-tuned member started from (its ``train_config.json``'s
    ``init_weights``), checked against the recorded sha256, so that its seed runs repeat the
    fine-tuning and not a training from scratch; None for a member trained from scratch."""
    init = cfg.get("init_weights")
    if not init:
        return None
    path = Path(init["file"])
    path = path if path.is_absolute() else config.REPO_ROOT / path
    if not path.is_file():
        raise LungsegInputError(f"{run}: was fine-tuned from {init['file']}, which is missing; "
                                "restore it (git history) to retrain this member with other seeds.")
    if dataio.file_sha256(path) != init["sha256"]:
        raise LungsegInputError(f"{path}: is not the file {run} was fine-tuned from (sha256 differs).")
    return path


def seed_spread(runs: dict, case_ids, folders: dict) -> dict:
    """Dice of runs that differ only in their seed, on cases none of them saw.

    ``runs``: ``{seed: run folder}`` (:func:`train_seeds`);
    ``case_ids``: their common test cases; ``folders``: as in :func:`evaluate_jobs`. Each
    case is segmented by the inference pipeline (probability on the case's own grid, boundary
    refined) on both grids. Returns ``{"seeds", "runs", "rows": [{"case_id", "grid",
    "seed", "dice"}], "summary": [{"case_id", "grid", "min", "max", "range", "sd"}]}``.
    """
    rows = []
    for seed, run in runs.items():
        forward = inference.compiled_forward(inference.load_model(run))
        for grid in GRIDS:
            for cid in case_ids if folders.get(grid) is not None else ():
                case = dataio.load_case(Path(folders[grid]) / cid)
                mask = inference.predict_volume(forward, case.ct_hu, case.affine)["mask"]
                rows.append({"case_id": cid, "grid": grid, "seed": int(seed),
                             "dice": metrics.dice(mask, case.mask)})
    summary = []
    for cid in case_ids:
        for grid in GRIDS:
            d = np.array([r["dice"] for r in rows if (r["case_id"], r["grid"]) == (cid, grid)])
            if d.size:
                summary.append({"case_id": cid, "grid": grid, "min": float(d.min()),
                                "max": float(d.max()), "range": float(np.ptp(d)),
                                "sd": float(d.std(ddof=1)) if d.size > 1 else 0.0})
    return {"seeds": [int(s) for s in runs],
            "runs": {str(s): dataio.portable_path(r) for s, r in runs.items()},
            "rows": rows, "summary": summary}



def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog or "python -m lungseg_utils.study.seeds",
        description="Seed spread: train one member of an ensemble again with other seeds and "
                    "write the spread of their Dice on its unseen cases (seed_spread.json).")
    p.add_argument("--from", dest="source", metavar="DIR", required=True,
                   help="the ensemble whose member to retrain (e.g. results/reference)")
    p.add_argument("--seeds", type=int, nargs="+", metavar="S", required=True,
                   help="the other training seeds")
    p.add_argument("--fold", type=int, default=0, help="the member to retrain (default 0)")
    p.add_argument("--data_dir", help="folder of patient_XXX/{ct,lung}.nii.gz (default: found)")
    p.add_argument("--out_dir", help="where the new runs go (default DIR/seeds)")
    return p


def run(args) -> int:
    """The seed-spread command on parsed ``args``; bad input raises."""
    runs = train_seeds(args.source, args.seeds, args.fold, args.data_dir, args.out_dir)
    manifest = dataio.load_json(Path(args.source) / inference.MANIFEST)
    test = manifest["members"][args.fold]["test"]
    native = config.native_data_dir()
    folders = {"grid64": Path(args.data_dir) if args.data_dir else synthetic.resolve_data_dir(),
               "native": native if native and all((native / c).is_dir() for c in test)
               else None}
    result = seed_spread(runs, test, folders)
    path = dataio.save_json({"run": experiments.run_identity(args.source), "fold": args.fold,
                             **result},
                            Path(args.source) / "seed_spread.json", overwrite=True)
    for row in result["summary"]:
        print(f"{row['case_id']} {row['grid']}: Dice {row['min']:.4f}..{row['max']:.4f} "
              f"over seeds {result['seeds']} (range {row['range']:.4f})")
    print(f"wrote {path}")
    return 0



def main(argv=None, prog: str | None = None) -> int:
    """``python -m lungseg_utils.study.seeds`` (``lungseg seeds``): 0 done, 2 bad input."""
    return run_command(build_parser(prog), run, argv)


if __name__ == "__main__":
    sys.exit(main())
