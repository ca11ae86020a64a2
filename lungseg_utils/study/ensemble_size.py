"""How many members: K, the number of cross-validation folds, chosen by measurement.

More folds give each member more cases to learn from (with nine cases: six at K = 3, seven
or eight at K = 5) and the shipped ensemble more members to average, at the price of more
bytes and a slower scan. Each candidate is an ensemble folder of the same recipe with its
own K (e.g. folds nested in one parent's folds, so that no candidate
trains from scratch). :func:`compare` scores each candidate's members out of fold on both
grids and reads one robustness suite run over all candidates (``python -m
lungseg_utils.study.robustness --ensemble A --ensemble B ...``: columns ``member``,
``member_2`` ...), then applies the rule fixed before the results came in:

    the larger K is chosen only if its members' out-of-fold Dice, averaged over the cases
    and both grids, is higher **and** its member's worst case in the robustness suite,
    averaged over the shifts, is not lower; otherwise the smaller K (fewer bytes, faster).

Command line::

    python -m lungseg_utils.study.ensemble_size --candidate DIR_K3 --candidate DIR_K5 \\
        --robustness ROBUSTNESS.json --out results/reference/ensemble_size.json
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import compact
from .. import experiments, inference, dataio, metrics
from ..scan import outputs
from ..errors import LungsegInputError
from ..runs.command import run_command


def out_of_fold_dice(folder, folders: dict) -> list[dict]:
    """Every case of ``folder``'s members scored by the member that never saw it, on each
    grid of ``folders`` (``{"grid64": dir, "native": dir or None}``): ``[{"case_id",
    "grid", "fold", "dice"}]``, sorted by grid and case."""
    rows = []
    for m in dataio.load_json(Path(folder) / inference.MANIFEST)["members"]:
        scores = compact.member_scores(Path(folder) / m["file"], m["test"], folders)
        rows += [{"case_id": cid, "grid": grid, "fold": m["fold"], "dice": dice}
                 for (cid, grid), (_, _, dice) in scores.items()]
    return sorted(rows, key=lambda r: (r["grid"], r["case_id"]))


def robustness_of(result: dict, folder) -> dict | None:
    """The robustness suite's column for ``folder``'s out-of-fold member (``member`` for the
    first ensemble listed, ``member_i`` for the i-th): its mean and worst Dice averaged over
    the shifts, and its lowest worst case; None if the suite did not run ``folder``."""
    listed = [Path(d).resolve() for d in result.get("ensembles", [])]
    if Path(folder).resolve() not in listed:
        return None
    i = listed.index(Path(folder).resolve()) + 1
    column = "member" if i == 1 else f"member_{i}"
    by_shift = [s[column] for s in result["summary"].values()]
    return {"column": column, "shifts": len(by_shift),
            "mean_of_means": float(np.mean([s["mean"] for s in by_shift])),
            "mean_of_worst": float(np.mean([s["worst_value"] for s in by_shift])),
            "lowest_worst": float(min(s["worst_value"] for s in by_shift))}


def candidate(folder, folders: dict, robustness: dict | None = None) -> dict:
    """One candidate ensemble measured: K, cases each member trained on, bytes, out-of-fold
    Dice per case and grid with their means and worst, and its robustness column."""
    manifest = dataio.load_json(Path(folder) / inference.MANIFEST)
    rows = out_of_fold_dice(folder, folders)
    grids = sorted({r["grid"] for r in rows})
    summary = {g: metrics.summarise([r for r in rows if r["grid"] == g], "dice") for g in grids}
    return {"folder": dataio.portable_path(folder), "k": len(manifest["members"]),
            "train_cases": sorted({len(m["train"]) for m in manifest["members"]}),
            "bytes": sum(int(m.get("bytes") or (Path(folder) / m["file"]).stat().st_size)
                         for m in manifest["members"]),
            "rows": rows,
            "dice": {g: {k: summary[g][k] for k in ("mean", "worst_value", "worst_case_id")}
                     for g in grids},
            "dice_mean_both_grids": float(np.mean([summary[g]["mean"] for g in grids])),
            "robustness": robustness_of(robustness, folder) if robustness else None}


def choose(candidates: list[dict]) -> dict:
    """The rule of the module docstring, applied pairwise from the smallest K up: returns
    ``{"k", "folder", "why"}``."""
    ordered = sorted(candidates, key=lambda c: c["k"])
    best, why = ordered[0], []
    for c in ordered[1:]:
        better = c["dice_mean_both_grids"] > best["dice_mean_both_grids"]
        rob_c, rob_b = c["robustness"], best["robustness"]
        if rob_c is None or rob_b is None:
            raise LungsegInputError(f"{c['folder']}: no robustness column to compare; run the "
                                    "suite over all candidates first.")
        sturdy = rob_c["mean_of_worst"] >= rob_b["mean_of_worst"]
        why.append(f"K={c['k']} vs K={best['k']}: out-of-fold Dice "
                   f"{c['dice_mean_both_grids']:.4f} vs {best['dice_mean_both_grids']:.4f}, "
                   f"robustness worst (mean over shifts) {rob_c['mean_of_worst']:.4f} vs "
                   f"{rob_b['mean_of_worst']:.4f}")
        if better and sturdy:
            best = c
    return {"k": best["k"], "folder": best["folder"], "why": why}


def compare(folders_by_k, data: dict, robustness_path=None) -> dict:
    """Measure every candidate (:func:`candidate`) and choose (:func:`choose`); the result
    names the chosen ensemble as its ``run`` (:func:`lungseg_utils.experiments.run_identity`),
    so that a report of another model refuses it."""
    robustness = dataio.load_json(robustness_path) if robustness_path else None
    cands = [candidate(f, data, robustness) for f in folders_by_k]
    ks = [c["k"] for c in cands]
    if len(set(ks)) != len(ks):
        raise LungsegInputError(f"ensemble_size: two candidates with the same K ({ks}).")
    chosen = choose(cands)
    folder = folders_by_k[[c["folder"] for c in cands].index(chosen["folder"])]
    return {"run": experiments.run_identity(folder), "candidates": cands, "chosen": chosen,
            "robustness": dataio.portable_path(robustness_path) if robustness_path else None}


def build_parser(prog: str | None = None):
    import argparse

    p = argparse.ArgumentParser(prog=prog or "python -m lungseg_utils.study.ensemble_size",
                                description="Choose K, the number of members, by measurement.")
    p.add_argument("--candidate", action="append", required=True,
                   help="an ensemble folder (repeat: one per K)")
    p.add_argument("--robustness", required=True,
                   help="a robustness.json whose --ensemble list holds every candidate")
    p.add_argument("--out", required=True, help="the JSON file to write")
    p.add_argument("--overwrite", action="store_true")
    return p


def run(args) -> int:
    """The comparison on parsed ``args`` (:func:`build_parser`); bad input raises."""
    from .. import config, synthetic

    outputs.check_output_paths([(args.out, "--out", (".json",))], overwrite=args.overwrite)
    result = compare(args.candidate, {"grid64": synthetic.resolve_data_dir(),
                                      "native": config.native_data_dir()}, args.robustness)
    dataio.save_json(result, args.out, overwrite=args.overwrite)
    for line in result["chosen"]["why"]:
        print(line)
    print(f"chosen: K={result['chosen']['k']} ({result['chosen']['folder']})")
    return 0


def main(argv=None, prog: str | None = None) -> int:
    """``python -m lungseg_utils.study.ensemble_size`` (``lungseg ensemble-size``): 0 done,
    2 bad input."""
    return run_command(build_parser(prog), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
