"""The numbers of what a run may lack, as printed (each None where the run lacks it): its
ensemble (``manifest.json``) and the optional studies: the robustness suite
(``robustness.json``, with the quality flag's measured power), the seed spread of one member
(``seed_spread.json``) and how the number of members was chosen (``ensemble_size.json``).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from .. import dataio
from ..experiments import METHOD_LABELS
from .formatting import fmt_number

#: Optional result files of a run, shown when present: the robustness suite (``make
#: robustness``), the seed spread (``lungseg seeds ...``) and
#: how K was chosen (``python -m lungseg_utils.study.ensemble_size``).
OPTIONAL_FILES = {"robustness": "robustness.json", "seeds": "seed_spread.json",
                  "ksize": "ensemble_size.json"}
#: How the robustness suite's methods are named in the report.
ROBUSTNESS_LABELS = {m: METHOD_LABELS[m] for m in ("member", "ensemble_oof", "ensemble_all",
                                                   "baseline")}


def ensemble_numbers(folder) -> dict | None:
    """The run's ensemble as the report describes it (None without ``manifest.json``):
    members, folds, model files' total size in MB and the largest member's."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        return None
    members = dataio.load_json(path)["members"]
    sizes = [m.get("bytes") or (Path(folder) / m["file"]).stat().st_size for m in members]
    return {"members": str(len(members)), "total_mb": fmt_number(sum(sizes) / 1e6, 0),
            "member_mb": fmt_number(max(sizes) / 1e6, 1)}


def ensemble_size_numbers(result: dict) -> dict:
    """``ensemble_size.json`` (K chosen by measurement) as printed: the chosen K and, per
    candidate, cases a member trained on, MB, out-of-fold Dice (mean and worst) on both
    grids and the robustness worst case averaged over the shifts."""
    rows = []
    for c in sorted(result["candidates"], key=lambda c: c["k"]):
        trained = c["train_cases"]
        rows.append({"k": str(c["k"]), "mb": fmt_number(c["bytes"] / 1e6, 0),
                     "train_cases": "–".join(str(v) for v in sorted({min(trained), max(trained)})),
                     **{f"{key}_{g}": fmt_number(c["dice"][g][field], 3)
                        for g in c["dice"] for key, field in (("dice", "mean"),
                                                               ("worst", "worst_value"))},
                     "dice_both": fmt_number(statistics.mean(c["dice"][g]["mean"]
                                                             for g in c["dice"]), 4),
                     "rob_worst": fmt_number(c["robustness"]["mean_of_worst"], 3)})
    return {"chosen": str(result["chosen"]["k"]), "rows": rows}


#: How the report names the robustness suite's shifts (``study.robustness.SHIFTS``), and the
#: groups its table folds them into: (row label, phrase for the prose, shifts).
SHIFT_GROUPS = (
    ("as stored", "the scan as stored", ("as stored",)),
    ("cube moved 2 cm", "the model cube moved 2 cm along each body axis",
     tuple(f"frame {d}+2cm" for d in "LRAPSI")),
    ("stored otherwise", "the axes stored in another order, or the scan cropped to the "
     "lungs along the head–foot axis", ("RAS order", "SLA order", "z-crop")),
    ("HU recalibrated", "every HU value shifted by ±50 or scaled by 0.9 or 1.1",
     ("HU +50", "HU -50", "HU x0.9", "HU x1.1")),
    ("noise or blur", "Gaussian noise of 25 HU, or a blur", ("noise 25 HU", "blur")),
    ("thicker slices", "slices twice as thick", ("thick slices",)),
)


def robustness_numbers(result: dict) -> dict:
    """``robustness.json`` as printed.

    ``rows``: per shift and method ``{"mean", "worst", "worst_case_id"}``; ``groups``: the
    table's rows, the shifts folded by :data:`SHIFT_GROUPS` (``{"label", "n", "member":
    {"mean", "worst"}, "baseline": {...}}``, each the lowest over the group's shifts; a shift
    no group names is a row of its own); ``changes``: the groups' phrases; ``hardest``: the
    group where one member's mean is lowest, its numbers and the lowest mean of the other
    groups; ``n_worst_above``: shifts where one member's worst case is above the classical
    pipeline's; ``facts``: the shift where one member's worst case is lowest, and each
    method's lowest worst case over all shifts."""
    methods = [m for m in result["methods"] if m in ROBUSTNESS_LABELS]
    rows, summary = [], result["summary"]
    for shift, by_method in summary.items():
        rows.append({"shift": shift,
                     **{m: {"mean": fmt_number(by_method[m]["mean"], 3),
                            "worst": fmt_number(by_method[m]["worst_value"], 3),
                            "worst_case_id": by_method[m]["worst_case_id"]} for m in methods}})
    hardest = min(summary, key=lambda k: summary[k]["member"]["worst_value"])
    n_cases = len({r["case_id"] for r in result["rows"]})
    lowest = {m: min(v[m]["worst_value"] for v in summary.values()) for m in methods}
    labels = {m: ROBUSTNESS_LABELS[m] for m in methods}
    n_unseen = len(result.get("ensembles", []))
    named = {s for *_, shifts in SHIFT_GROUPS for s in shifts}
    groups = [(label, phrase, [s for s in shifts if s in summary])
              for label, phrase, shifts in SHIFT_GROUPS]
    groups = [g for g in groups if g[2]] + [(s, s, [s]) for s in summary if s not in named]
    table = []
    for label, phrase, shifts in groups:
        table.append({"label": label + (f" ({len(shifts)})" if len(shifts) > 1 else ""),
                      "phrase": phrase, "n": str(len(shifts)),
                      **{m: {k: fmt_number(min(summary[s][m][key] for s in shifts), 3)
                             for k, key in (("mean", "mean"), ("worst", "worst_value"))}
                         for m in ("member", "baseline") if m in methods}})
    by_mean = sorted(table, key=lambda g: float(g["member"]["mean"]))
    hard = by_mean[0]
    return {"methods": methods, "labels": labels, "n_unseen": str(n_unseen),
            "rows": rows, "n_cases": str(n_cases), "n_shifts": str(len(summary)),
            "groups": table, "n_changes": str(len(summary) - ("as stored" in summary)),
            "changes": [g["phrase"] for g in table if g["label"] != "as stored"],
            "hardest": {"label": hard["label"], "phrase": hard["phrase"],
                        "member": hard["member"], "baseline": hard.get("baseline"),
                        "others_min_mean": by_mean[1]["member"]["mean"] if len(by_mean) > 1
                        else None},
            "n_worst_above": str(sum(v["member"]["worst_value"] > v["baseline"]["worst_value"]
                                     for v in summary.values())) if "baseline" in methods else None,
            "facts": {"hardest_shift": hardest,
                      "lowest": {m: fmt_number(v, 3) for m, v in lowest.items()}},
            "flag": flag_numbers(result.get("flag_power"))}


def flag_numbers(power: dict | None) -> dict | None:
    """The quality flag's measured power (``robustness.json``'s ``flag_power``) as printed:
    per method, rows, rows below the Dice cut, and per score its AUC and Spearman's rho
    (None for a file written before the flag was measured)."""
    if not power:
        return None
    out = {}
    for method, p in power.items():
        out[method] = {"n": str(p["n"]), "n_below": str(p["n_below"]),
                       "dice_below": fmt_number(p["dice_below"], 2),
                       "scores": {k: {"auc": fmt_number(v["auc"], 2),
                                      "spearman": fmt_number(v["spearman"], 2)}
                                  for k, v in p["scores"].items()}}
        if "flag" in p:
            f = p["flag"]
            out[method]["flag"] = {"flagged": str(f["flagged"]),
                                   "sensitivity": fmt_number(100 * f["sensitivity"], 0),
                                   "specificity": fmt_number(100 * f["specificity"], 0)}
    return out


def seed_numbers(result: dict) -> dict:
    """``seed_spread.json`` as printed: the seeds, per case and grid the lowest and highest
    Dice and their range, and the largest range over them."""
    rows = [{"case_id": r["case_id"], "grid": r["grid"], "min": fmt_number(r["min"], 3),
             "max": fmt_number(r["max"], 3), "range": fmt_number(r["range"], 3)}
            for r in result["summary"]]
    return {"fold": str(result["fold"]), "seeds": ", ".join(map(str, result["seeds"])),
            "n_seeds": str(len(result["seeds"])), "rows": rows,
            "max_range": fmt_number(max(r["range"] for r in result["summary"]), 3)}
