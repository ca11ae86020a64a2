"""The numbers the report and the README print, read from a run's result files.

:func:`read_results` reads and checks the result files of a run (``evaluation.json``,
``tta.json``, ``train_config.json``, ``training_log.csv`` ..., plus ``robustness.json`` and
``seed_spread.json`` where the run has them); :func:`report_numbers` turns them into one dict
in which every number is already formatted as printed (:mod:`lungseg_utils.report.formatting`).
:mod:`lungseg_utils.report.build` writes that dict beside the PDF and builds the PDF and the
README's results block from it.
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

from .. import config, experiments, dataio
from ..errors import LungsegInputError
from ..experiments import GRIDS, METHOD_LABELS, check_evaluation, check_tta
from .formatting import fmt_general, fmt_number, format_tree, format_value
from ..inference import FLIPS, REFINE_HU

#: The figures the report shows, as exported by the notebooks (``figures/<name>.{png,pdf}``);
#: the two-digit prefix names the notebook that makes each one.
REPORT_FIGURES = ("02_model_grid_round_trip", "04_training_curves", "05_dice_paired",
                  "05_worst_cases", "06_tta_uncertainty")
#: The result files of a run that the report reads.
RESULT_FILES = ("split.json", "train_config.json", "training_log.csv", "test_metrics.json",
                "evaluation.json", "tta.json")
#: Fewer cases than this and a bootstrap interval is described as uninformative: it can only
#: resample the few per-case differences, so it is little more than their range.
FEW_CASES = 5
#: A figure wider than this (inches, as exported) spans both columns of the report.
WIDE_FIGURE_IN = 4.5


# ----------------------------------------------------------------------------- reading
def read_training_log(path) -> list[dict]:
    """Rows of a Keras ``CSVLogger`` file (a path) as dicts of floats (``epoch`` as int)."""
    with open(path, newline="") as f:
        rows = [{k: (int(float(v)) if k == "epoch" else float(v)) for k, v in row.items()
                 if k is not None and v not in (None, "")} for row in csv.DictReader(f)]
    if not rows:
        raise LungsegInputError(f"{path}: the training log has no rows.")
    for col in ("epoch", "loss", "val_loss", "val_dice"):
        if col not in rows[0]:
            raise LungsegInputError(f"{path}: column {col!r} is missing.")
    return rows


def read_results(results_dir=None) -> dict:
    """The raw contents of a run's result files, keyed by file stem.

    ``results_dir`` defaults to :func:`lungseg_utils.config.active_run_dir`. Raises
    :class:`LungsegInputError` naming the first file of :data:`RESULT_FILES` that is missing
    or unreadable, a key that the report needs and the file lacks (``experiments.check_*``),
    or a result file about another run's model (``experiments.check_identity``).
    """
    folder = Path(results_dir) if results_dir is not None else config.active_run_dir()
    for name in RESULT_FILES:
        if not (folder / name).is_file():
            raise LungsegInputError(f"{folder / name}: result file is missing; the report "
                                    "needs every one of " + ", ".join(RESULT_FILES) + ".")
    raw = {Path(n).stem: dataio.load_json(folder / n) for n in RESULT_FILES if n.endswith(".json")}
    raw["training_log"] = read_training_log(folder / "training_log.csv")
    check_evaluation(raw["evaluation"], "evaluation.json")
    check_tta(raw["tta"], "tta.json")
    for stem, notebook in (("evaluation", "05"), ("tta", "06")):
        experiments.check_identity(raw[stem], folder, f"{stem}.json", notebook)
    if not {"train", "val", "test"} <= set(raw["split"]) or "settings" not in raw["train_config"]:
        raise LungsegInputError(f"{folder}: split.json needs train, val and test, "
                                "train_config.json its settings.")
    raw["results_dir"] = folder
    return raw


def training_summary(cfg: dict, log: list[dict], test_metrics: dict) -> dict:
    """What the Training section states, from ``train_config.json`` and ``training_log.csv``."""
    settings = cfg["settings"]
    best = min(log, key=lambda r: r["val_loss"])  # the checkpoint kept (monitor val_loss)
    wall_s = (test_metrics.get("training") or {}).get("wall_s_this_session")
    params = (cfg.get("model") or {}).get("params")
    lr, lr0 = log[-1].get("learning_rate"), log[0].get("learning_rate")
    versions = cfg.get("versions") or {}
    return {
        "profile": cfg.get("profile", "?"),
        "epochs_run": str(len(log)),
        "epochs_planned": str(settings.get("epochs", "?")),
        "best_epoch": str(best["epoch"] + 1),
        "best_val_dice": fmt_number(best["val_dice"], 3),
        "final_lr": fmt_general(lr) if lr is not None else "n/a",
        "lr_reduced": lr is not None and lr0 is not None and lr < lr0,
        "wall_time_min": fmt_number(wall_s / 60.0, 0) if wall_s else "n/a",
        "params_m": fmt_number(params / 1e6, 2) if params else "n/a",
        "init_from": (cfg.get("init_weights") or {}).get("file"),   # fine-tuned from, or None
        "keras": str(versions.get("keras", "?")),
        "tensorflow": str(versions.get("tensorflow", "?")),
    }


def _figure_info(figures_dir: Path) -> dict:
    """``{name: {"path", "width_in", "aspect", "wide", "min_font_pt"}}`` for
    :data:`REPORT_FIGURES`: where Typst finds the PDF, the exported width in inches, width /
    height, whether it spans both columns, and its smallest text in pt at the exported size
    (:func:`lungseg_utils.viz.smallest_text_pt`; None for a figure exported before it was
    recorded). Raises naming the first figure missing as PNG or PDF."""
    from ..viz import MIN_FONT_KEY
    from PIL import Image

    info = {}
    for name in REPORT_FIGURES:
        for ext in ("pdf", "png"):
            if not (figures_dir / f"{name}.{ext}").is_file():
                raise LungsegInputError(f"{figures_dir / f'{name}.{ext}'}: figure is missing; "
                                        f"run notebook {name[:2]} to export it.")
        with Image.open(figures_dir / f"{name}.png") as im:
            w_px, h_px = im.size
            dpi = float((im.info.get("dpi") or (300, 300))[0]) or 300.0
            font = im.info.get(MIN_FONT_KEY)
        info[name] = {"path": f"/figures/{name}.pdf", "width_in": round(w_px / dpi, 3),
                      "aspect": round(w_px / h_px, 4), "wide": w_px / dpi > WIDE_FIGURE_IN,
                      "min_font_pt": float(font) if font else None}
    return info


def report_numbers(results_dir=None, figures_dir=None) -> dict:
    """Everything ``report.typ`` prints, as text (see the module docstring).

    Keys: ``evaluation``, ``tta`` and ``split``, each the file with its numbers formatted;
    ``settings`` (the run's settings, formatted) and ``augment``; ``training`` (from the
    log and ``test_metrics.json``); ``grid`` (the model grid of :mod:`config`); ``facts``
    (what the prose hangs on); ``compare``, ``tta_table`` and ``tta_mean`` (per grid); ``labels`` (method names);
    ``figures`` (see :func:`_figure_info`, only if ``figures_dir`` is given); ``results_dir``.
    """
    raw = read_results(results_dir)
    cfg, ev, tta = raw["train_config"], raw["evaluation"], raw["tta"]
    settings = cfg["settings"]
    s64, snat = ev["grid64"]["summary"], ev["native"]["summary"]
    gain, gain_nat = tta["dice_gain"], tta["dice_gain_native"]
    hu = settings.get("hu_window", config.HU_WINDOW)
    dice = {m: snat[m]["dice"]["mean"] for m in snat}
    tta_rows = {g: [r for r in tta["cases"] if r["grid"] == g] for g in GRIDS}
    oof = ev.get("scoring") == "out_of_fold"    # every case by the member that never saw it
    n_tta = min(len(tta_rows["grid64"]), len(tta_rows["native"]))
    numbers = {
        "about": "Generated by lungseg_utils.report.build from the result files; every number "
                 "is formatted as report.typ prints it. Do not edit: run make report.",
        "results_dir": dataio.portable_path(raw["results_dir"]),
        "run": experiments.run_identity(raw["results_dir"]),
        "labels": METHOD_LABELS,
        "grid": {"shape": str(config.MODEL_SHAPE[0]),
                 "spacing_mm": fmt_number(config.MODEL_SPACING_MM, 0),
                 "extent_mm": fmt_number(config.MODEL_SHAPE[0] * config.MODEL_SPACING_MM, 0),
                 "hu_low": fmt_number(hu[0], 0), "hu_high": fmt_number(hu[1], 0),
                 "tta_flips": str(len(FLIPS)), "refine_hu": fmt_number(REFINE_HU, 0)},
        "n_cases": {k: str(len(raw["split"][k])) for k in ("train", "val", "test")}
                   | {"all": str(len(set().union(*(raw["split"][k] for k in ("train", "val",
                                                                            "test")))))}
                   | ({"test": str(len(ev["test_cases"]))} if oof else {}),
        "settings": format_tree(settings),
        "augment": format_tree({**settings, **(cfg.get("augment") or {})}),
        "training": training_summary(cfg, raw["training_log"], raw["test_metrics"]),
        "facts": {
            "out_of_fold": oof,
            # the inference pipeline against the network's own 5 mm boundary and the ceiling
            "unet_above_ceiling": dice["unet"] > dice["ceiling"],
            "raw_above_ceiling": dice["unet_raw"] > dice["ceiling"],
            "native_gap_to_ceiling": fmt_number(abs(dice["ceiling"] - dice["unet"]), 3),
            "raw_gap_to_ceiling": fmt_number(abs(dice["ceiling"] - dice["unet_raw"]), 3),
            "refine_gain": fmt_number(dice["unet"] - dice["unet_raw"], 3, signed=True),
            "ceiling_loss": fmt_number(1.0 - dice["ceiling"], 3),
            "tta_ci_excludes_zero": gain["lo"] > 0 or gain["hi"] < 0,
            "tta_native_ci_excludes_zero": gain_nat["lo"] > 0 or gain_nat["hi"] < 0,
            "tta_n_cases": str(n_tta),
            "tta_few_cases": n_tta < FEW_CASES,
            # tta.json holds other cases than the test split: notebook 06 used the CV folds
            "tta_out_of_fold": {r["case_id"] for r in tta["cases"]} != set(ev["test_cases"]),
            "tta_slowdown": fmt_number(tta["time_s"]["tta"] / tta["time_s"]["single"], 1),
            "has_cv": "cross_validation" in ev,
            "has_auc": "uncertainty_error_auc" in tta,
        },
        "tta_table": _tta_table(tta_rows),
        "tta_mean": {g: {k: format_value(k, sum(r[k] for r in rs) / len(rs)) for k in
                         ("dice_single", "dice_tta", "hd95_single_mm", "hd95_tta_mm")}
                     if rs else None for g, rs in tta_rows.items()},
        # U-Net against the classical pipeline, post-processing against the U-Net
        "compare": {"grid64": {"baseline": _compare(s64["unet"], s64["baseline"]),
                               "post": _compare(s64["unet_post"], s64["unet"])},
                    "native": {"baseline": _compare(snat["unet"], snat["baseline"])}},
    }
    if "cross_validation" in ev:
        cv = ev["cross_validation"]
        c64, cnat = cv["grid64"]["summary"], cv["native"]["summary"]
        cv_dice = {m: cnat[m]["dice"]["mean"] for m in cnat}
        numbers["facts"] |= {
            "cv_n_cases": str(len(cv["grid64"]["cases"])),
            "cv_unet_above_ceiling": cv_dice["unet"] > cv_dice["ceiling"],
            "cv_refine_gain": fmt_number(cv_dice["unet"] - cv_dice["unet_raw"], 3, signed=True),
        }
        numbers["compare"]["cv"] = {
            "grid64": {"baseline": _compare(c64["unet"], c64["baseline"])},
            "native": {"baseline": _compare(cnat["unet"], cnat["baseline"])}}
    numbers["versus"] = {key: difference_numbers(experiments.method_difference(ev, grid, b=b))
                         for key, (grid, b) in VERSUS.items() if ev[grid]["cases"]}
    numbers["worst"] = worst_case_numbers(ev)
    numbers["tta_default"] = experiments.tta_recommendation(tta)["default"]
    for stem in ("evaluation", "tta", "split"):
        numbers[stem] = format_tree(raw[stem])
    numbers["ensemble"] = ensemble_numbers(raw["results_dir"])
    for key, name in OPTIONAL_FILES.items():
        found = experiments.optional_result(raw["results_dir"], name, "05")
        numbers[key] = found and {"robustness": robustness_numbers, "seeds": seed_numbers,
                                  "ksize": ensemble_size_numbers}[key](found)
    if figures_dir is not None:
        numbers["figures"] = _figure_info(Path(figures_dir))
    return numbers


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
                     "rob_worst": fmt_number(c["robustness"]["mean_of_worst"], 3)})
    return {"chosen": str(result["chosen"]["k"]), "rows": rows}


def robustness_numbers(result: dict) -> dict:
    """``robustness.json`` as printed: ``{"methods", "rows": [{"shift", method:
    {"mean", "worst", "worst_case_id"}}], "facts"}``; ``facts`` names the shift where one
    member's worst case is lowest, and each method's lowest worst case over all shifts."""
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
    return {"methods": methods, "labels": labels, "n_unseen": str(n_unseen),
            "rows": rows, "n_cases": str(n_cases), "n_shifts": str(len(summary)),
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


#: The paired comparisons the report prints: key -> (grid, method set against the baseline).
VERSUS = {"grid64": ("grid64", "unet"), "native": ("native", "unet"),
          "native_raw": ("native", "unet_raw")}


def difference_numbers(d: dict) -> dict:
    """:func:`lungseg_utils.experiments.method_difference` as printed (signed, 4 decimals),
    with ``excludes_zero``: whether the interval lies on one side of zero."""
    return {"mean_diff": fmt_number(d["mean_diff"], 4, signed=True),
            "lo": fmt_number(d["lo"], 4, signed=True), "hi": fmt_number(d["hi"], 4, signed=True),
            "ci": fmt_number(100 * d["ci"], 0), "n": str(d["n"]), "n_better": str(d["n_better"]),
            "excludes_zero": d["lo"] > 0 or d["hi"] < 0}


def worst_case_numbers(ev: dict) -> dict:
    """The U-Net's worst case (native grid, else 64^3) as printed: its Dice and HD95, its
    reference lung volume (L), whether the largest, the cases' median, the U-Net's volume error,
    and whether the classical pipeline did better on it."""
    grid = "native" if ev["native"]["cases"] else "grid64"
    cases = ev[grid]["cases"]
    w = min(cases, key=lambda c: c["unet"]["dice"])
    volumes = [c["unet"]["volume_ref_ml"] for c in cases]
    return {"grid": grid, "case_id": w["case_id"], "dice": fmt_number(w["unet"]["dice"], 3),
            "hd95_mm": fmt_number(w["unet"]["hd95_mm"], 1),
            "volume_l": fmt_number(w["unet"]["volume_ref_ml"] / 1000, 1),
            "median_volume_l": fmt_number(statistics.median(volumes) / 1000, 1),
            "largest": w["unet"]["volume_ref_ml"] == max(volumes), "n_cases": str(len(cases)),
            "volume_error_pct": fmt_number(w["unet"]["volume_error_pct"], 1, signed=True),
            "under": w["unet"]["volume_error_pct"] < 0,
            "baseline_dice": fmt_number(w["baseline"]["dice"], 3),
            "baseline_better": w["baseline"]["dice"] > w["unet"]["dice"]}


def _compare(a: dict, b: dict) -> dict:
    """How the Dice summary ``a`` compares with ``b``: ``{"order": "higher" | "lower" |
    "same" (same when equal as printed), "close": the means differ by less than the larger
    SD, i.e. the cases do not separate them}``."""
    ma, mb = a["dice"]["mean"], b["dice"]["mean"]
    same = fmt_number(ma, 3) == fmt_number(mb, 3)
    sds = [v for v in (a["dice"]["sd"], b["dice"]["sd"]) if v is not None and not math.isnan(v)]
    return {"order": "same" if same else "higher" if ma > mb else "lower",
            "close": same or (bool(sds) and abs(ma - mb) < max(sds))}


def _tta_table(rows: dict) -> list[dict]:
    """One row per case of ``tta.json``: ``{"case_id", "grid64": {...}, "native": {...}}``
    (each grid's row formatted, ``None`` where the case lacks that grid), in file order."""
    ids = dict.fromkeys(r["case_id"] for g in rows for r in rows[g])
    return [{"case_id": cid, **{g: next((format_tree(r) for r in rows[g] if r["case_id"] == cid),
                                        None) for g in GRIDS}} for cid in ids]
