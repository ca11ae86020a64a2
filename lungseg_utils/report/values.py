"""The numbers the report and the README print, read from a run's result files.

:func:`read_results` reads and checks the result files of a run (``evaluation.json``,
``tta.json``, ``train_config.json``, ``training_log.csv`` ..., plus ``robustness.json`` and
``seed_spread.json`` where the run has them); :func:`report_numbers` turns them into one dict
in which every number is already formatted as printed (:mod:`lungseg_utils.report.formatting`),
and every sentence whose truth depends on the run is chosen by
:mod:`lungseg_utils.report.claims` (``numbers["say"]``, with the claims it printed in
``numbers["claims"]``). :mod:`lungseg_utils.report.build` writes that dict beside the PDF and
builds the PDF and the README's results block from it.

The numbers of what a run may lack (its ensemble, the optional studies) are formatted in
:mod:`lungseg_utils.report.values_studies`, what the report needs of its figures is read in
:mod:`lungseg_utils.report.figures`.
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

from .. import config, dataio, experiments, metrics
from ..errors import LungsegInputError
from ..experiments import GRIDS, METHOD_LABELS
from .figures import figure_info
from .schema import check_evaluation, check_tta
from .formatting import fmt_general, fmt_number, format_tree, format_value
from .values_studies import (
    OPTIONAL_FILES,
    ensemble_numbers,
    ensemble_size_numbers,
    robustness_numbers,
    seed_numbers,
)
from ..inference import FLIPS, REFINE_HU, REFINE_HU_MODEL_GRID
from ..anatomy import classical_lung_mask

#: The result files of a run that the report reads.
RESULT_FILES = ("split.json", "train_config.json", "training_log.csv", "test_metrics.json",
                "evaluation.json", "tta.json")
#: Fewer cases than this and a bootstrap interval is described as uninformative: it can only
#: resample the few per-case differences, so it is little more than their range.
FEW_CASES = 5


# ----------------------------------------------------------------------------- reading
def read_training_log(path) -> list[dict]:
    """Rows of a Keras ``CSVLogger`` file (a path) as dicts of floats (``epoch`` as int); an
    epoch without validation (``validate_every``) has no ``val_*`` keys."""
    with open(path, newline="") as f:
        rows = [{k: (int(float(v)) if k == "epoch" else float(v)) for k, v in row.items()
                 if k is not None and v not in (None, "", "NA")} for row in csv.DictReader(f)]
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
    or unreadable, a key that the report needs and the file lacks (``schema.check_*``),
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
    """What the Methods section states about training, from ``train_config.json`` (member 0's,
    for an ensemble), its ``training_log.csv`` and ``test_metrics.json``: the schedule, the
    weights kept, the precision, where the weights started, the time and the versions."""
    settings = cfg["settings"]
    best = min((r for r in log if "val_loss" in r), key=lambda r: r["val_loss"])  # under "best"
    wall_s = (test_metrics.get("training") or {}).get("wall_s_this_session")
    params = (cfg.get("model") or {}).get("params")
    lr, lr0 = log[-1].get("learning_rate"), log[0].get("learning_rate")
    versions = cfg.get("versions") or {}
    # train.py records the dtype policy it used ("precision"); older runs only the setting
    precision = cfg.get("precision") or ("mixed_bfloat16" if settings.get("mixed_precision") is True
                                         else "float32")
    samples = settings.get("samples_per_epoch")
    return {
        "profile": cfg.get("profile", "?"),
        "epochs_run": str(len(log)),
        "epochs_planned": str(settings.get("epochs", "?")),
        "samples_per_epoch": str(samples) if samples else None,
        "volumes": f"{samples} augmented volumes" if samples else "the augmented training volumes",
        "batch_size": str(settings.get("batch_size", "?")),
        "depth": str(settings.get("depth", 4)),             # unet.build_unet's default
        "base_filters": str(settings.get("base_filters", 16)),
        "learning_rate": fmt_general(float(settings.get("learning_rate", 1e-3))),
        "warmup_epochs": str(int(settings.get("warmup_epochs") or 0)),
        "schedule": settings.get("lr_schedule", "plateau"),
        "checkpoint": settings.get("checkpoint", "best"),
        "reduce_lr_patience": str(settings.get("reduce_lr_patience", "?")),
        "early_stop_patience": str(settings.get("early_stop_patience", "?")),
        "precision": "bfloat16" if "bfloat16" in str(precision) else "float32",
        "best_epoch": str(best["epoch"] + 1),
        "best_val_dice": fmt_number(best["val_dice"], 3),
        "final_lr": fmt_general(lr) if lr is not None else "n/a",
        "lr_reduced": lr is not None and lr0 is not None and lr < lr0,
        "wall_time_min": fmt_number(wall_s / 60.0, 0) if wall_s else "n/a",
        "params_m": fmt_number(params / 1e6, 2) if params else "n/a",
        "init_from": (cfg.get("init_weights") or {}).get("file"),   # started from, or None
        "keras": str(versions.get("keras", "?")),
        "tensorflow": str(versions.get("tensorflow", "?")),
    }


def augmentation_text(aug: dict) -> str:
    """The augmentations a run's settings switch on, as two short sentences (their
    probabilities are in ``train_config.json``)."""
    on = lambda key: float(aug.get(key) or 0) > 0  # noqa: E731
    g = lambda key: fmt_general(float(aug.get(key) or 0))  # noqa: E731
    pct = lambda key: fmt_number(100 * float(aug.get(key) or 0), 0)  # noqa: E731
    basic = [what for key, what in (
        ("p_flip", "flips along each axis"), ("p_rot90", "rotations by multiples of 90°"),
        ("p_jitter", "small changes of intensity"),
        ("p_shift", f"shifts of up to {g('max_shift_vox')} voxels"),
        ("p_elastic", f"a mild elastic deformation (up to {g('elastic_sigma_mm')} mm)"))
        if on(key)]
    real = [what for key, what in (
        ("p_affine", f"rotated by up to {g('max_rot_deg')}° and scaled by up to {pct('max_scale')} %"),
        ("p_zcrop", "cropped to the lungs along the head–foot axis"),
        ("p_intensity", f"recalibrated (HU shifted by up to {g('hu_offset')} and scaled by up "
                        f"to {pct('hu_scale')} %)"),
        ("p_blur", "blurred or given thicker slices")) if on(key)]
    join = lambda xs: ", ".join(xs[:-1]) + (" and " if len(xs) > 1 else "") + xs[-1]  # noqa: E731
    text = (f"Every epoch draws each training volume afresh, with random {join(basic)}, CT and "
            "mask alike." if basic else "The training volumes are not augmented.")
    if real:
        text += (" Along the axes in which real scans differ, a volume may also be "
                 + "; ".join(real[:-1]) + ("; or " if len(real) > 1 else "") + real[-1] + ".")
    return text.replace(" %", "\u00a0%")



def scored_block(ev: dict) -> tuple[str, dict]:
    """The block of ``evaluation.json`` the report leads with, and how it was scored: the
    whole file when an ensemble scored every case out of fold (``"out_of_fold"``), else its
    cross-validation where it has one (``"cross_validation"``: every case out of fold too),
    else the single model's held-out test cases (``"test_split"``)."""
    if ev.get("scoring") == "out_of_fold":
        return "out_of_fold", ev
    if "cross_validation" in ev:
        return "cross_validation", ev["cross_validation"]
    return "test_split", ev


#: Numbers from the field (GUIDE.md section 4), with their sources, which the discussion
#: compares with; the report cites the sources beside them.
FIELD = {"lctsc_dice_lo": "0.97", "lctsc_dice_hi": "0.98",      # Yang et al. 2018, Table 7
         "lctsc_hd95_lo": "2.1", "lctsc_hd95_hi": "4.7",        # (best methods, full resolution)
         "r231_dice": "0.98", "r231_sd": "0.03", "r231_scans": "231"}  # Hofmanninger et al. 2020


def report_numbers(results_dir=None, figures_dir=None) -> dict:
    """Everything ``report.typ`` prints, as text (see the module docstring).

    Keys: ``evaluation``, ``tta`` and ``split``, each the file with its numbers formatted;
    ``scored`` (the block Table 1 shows, :func:`scored_block`, with its summaries);
    ``settings``, ``augment`` and ``training`` (from ``train_config.json``, the log and
    ``test_metrics.json``); ``grid`` (the model grid of :mod:`config`); ``facts`` (numbers
    the prose derives); ``versus`` (paired comparisons with the classical pipeline) and
    ``worst`` (the worst case), both on the scored block; ``ensemble``, ``robustness``,
    ``seeds``, ``ksize`` (None where the run lacks them); ``field``; ``say`` and ``claims``
    (:mod:`lungseg_utils.report.claims`); ``figures`` (see :func:`.figures.figure_info`, only if
    ``figures_dir`` is given); ``results_dir``.
    """
    from . import claims

    raw = read_results(results_dir)
    cfg, ev, tta = raw["train_config"], raw["evaluation"], raw["tta"]
    settings = cfg["settings"]
    how, block = scored_block(ev)
    s64, snat = block["grid64"]["summary"], block["native"]["summary"]
    hu = settings.get("hu_window", config.HU_WINDOW)
    dice = {g: {m: s[m]["dice"]["mean"] for m in s} for g, s in (("grid64", s64), ("native", snat))}
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
                 "tta_flips": str(len(FLIPS)), "refine_hu": fmt_number(REFINE_HU, 0),
                 "refine_hu_64": fmt_number(REFINE_HU_MODEL_GRID, 0),
                 "classical_hu": fmt_number(_default(classical_lung_mask, "threshold_hu"), 0),
                 "n_boot": f"{_default(metrics.paired_bootstrap_ci, 'n_boot'):,}".replace(",", " ")},
        "n_cases": {k: str(len(raw["split"][k])) for k in ("train", "val", "test")}
                   | {"all": str(len(set().union(*(raw["split"][k] for k in ("train", "val",
                                                                            "test")))))}
                   | ({"test": str(len(ev["test_cases"]))} if oof else {}),
        "settings": format_tree(settings),
        "augment": format_tree({**settings, **(cfg.get("augment") or {})}),
        "training": training_summary(cfg, raw["training_log"], raw["test_metrics"])
                    | {"augmentation": augmentation_text({**settings, **(cfg.get("augment") or {})})},
        "scored": {"how": how, "n": str(len(block["grid64"]["cases"])),
                   "folds": str(block.get("folds", "")),
                   "grid64": format_tree(s64), "native": format_tree(snat)},
        "table1": table1_rows(s64, snat),
        "facts": {
            "out_of_fold": oof,
            "has_cv": "cross_validation" in ev,
            # the boundary refinement against the network's own 5 mm edge and the ceiling
            "refine_gain": fmt_number(dice["native"]["unet"] - dice["native"]["unet_raw"], 3,
                                      signed=True),
            "raw_gap_to_ceiling": fmt_number(dice["native"]["ceiling"]
                                             - dice["native"]["unet_raw"], 3, signed=True),
            "unet_gap_to_ceiling": fmt_number(dice["native"]["ceiling"]
                                              - dice["native"]["unet"], 3, signed=True),
            "post_gain_grid64": fmt_number(dice["grid64"]["unet_post"] - dice["grid64"]["unet"],
                                           3, signed=True),
            "post_gain_native": fmt_number(dice["native"]["unet_post"] - dice["native"]["unet"],
                                           3, signed=True),
            "tta_n_cases": str(n_tta),
            "tta_few_cases": n_tta < FEW_CASES,
            "tta_slowdown": fmt_number(tta["time_s"]["tta"] / tta["time_s"]["single"], 1),
            "few_cases": str(FEW_CASES),
        },
        "tta_mean": {g: {k: format_value(k, sum(r[k] for r in rs) / len(rs)) for k in
                         ("dice_single", "dice_tta", "hd95_single_mm", "hd95_tta_mm")}
                     if rs else None for g, rs in tta_rows.items()},
        "field": FIELD,
    }
    if "cross_validation" in ev:
        numbers["facts"]["cv_n_cases"] = str(len(ev["cross_validation"]["grid64"]["cases"]))
    numbers["versus"] = {key: difference_numbers(experiments.method_difference(block, grid, b=b))
                         for key, (grid, b) in VERSUS.items() if block[grid]["cases"]}
    numbers["worst"] = worst_case_numbers(block)
    numbers["tta_default"] = experiments.tta_recommendation(tta)["default"]
    for stem in ("evaluation", "tta", "split"):
        numbers[stem] = format_tree(raw[stem])
    numbers["ensemble"] = ensemble_numbers(raw["results_dir"])
    for key, name in OPTIONAL_FILES.items():
        found = experiments.optional_result(raw["results_dir"], name, "05")
        numbers[key] = found and {"robustness": robustness_numbers, "seeds": seed_numbers,
                                  "ksize": ensemble_size_numbers}[key](found)
    numbers["robustness_table"] = [numbers["robustness"]] if numbers["robustness"] else []
    if figures_dir is not None:
        numbers["figures"] = figure_info(Path(figures_dir))
    numbers["say"], numbers["claims"] = claims.say(numbers)
    return numbers


#: Table 1's rows: method, and whether it exists on the 64^3 grid.
TABLE1_METHODS = ("unet", "unet_raw", "unet_post", "baseline", "ceiling")


def table1_rows(s64: dict, snat: dict) -> list[list[str]]:
    """Table 1 as printed, one list of cells per method of :data:`TABLE1_METHODS`: label;
    Dice on the 64^3 grid (mean ± SD, worst and its case's number); on the native grid the
    same, HD95 (mm) and volume error (%), each mean ± SD; "–" where a method has no score."""
    def pm(s, key):
        s = format_tree(s[key], key)
        return s["mean"] if s["sd"] == "n/a" else f"{s['mean']} ± {s['sd']}"

    def worst(s):
        d = format_tree(s["dice"], "dice")
        return f"{d['worst_value']} ({str(d['worst_case_id']).split('_')[-1]})"

    rows = []
    for m in TABLE1_METHODS:
        g, nat = s64.get(m), snat.get(m)
        rows.append([TABLE1_LABELS[m],
                     *((pm(g, "dice"), worst(g)) if g else ("–", "–")),
                     *((pm(nat, "dice"), worst(nat), pm(nat, "hd95_mm"),
                        pm(nat, "volume_error_pct")) if nat else ("–",) * 4)])
    return rows


#: How Table 1 names the methods.
TABLE1_LABELS = {"unet": "U-Net", "unet_raw": "U-Net, 5 mm edge", "unet_post": "U-Net + post-proc.",
                 "baseline": "classical pipeline", "ceiling": "resolution ceiling"}


def _default(func, name: str):
    """The default value of ``func``'s argument ``name`` (a method's fixed setting)."""
    import inspect

    return inspect.signature(func).parameters[name].default


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


def worst_case_numbers(block: dict) -> dict:
    """The U-Net's worst case in an ``evaluation.json`` block (native grid, else 64^3) as
    printed: its Dice and HD95, its reference lung volume (L), whether the largest, the cases'
    median, the U-Net's volume error, the lung it missed and added (ml, from its Dice and the
    two volumes: overlap = Dice x (predicted + reference) / 2), and the classical pipeline's
    Dice on it."""
    grid = "native" if block["native"]["cases"] else "grid64"
    cases = block[grid]["cases"]
    w = min(cases, key=lambda c: c["unet"]["dice"])
    u = w["unet"]
    volumes = [c["unet"]["volume_ref_ml"] for c in cases]
    overlap = u["dice"] * (u["volume_pred_ml"] + u["volume_ref_ml"]) / 2.0
    return {"grid": grid, "case_id": w["case_id"], "dice": fmt_number(u["dice"], 3),
            "hd95_mm": fmt_number(u["hd95_mm"], 1),
            "volume_l": fmt_number(u["volume_ref_ml"] / 1000, 1),
            "median_volume_l": fmt_number(statistics.median(volumes) / 1000, 1),
            "largest": u["volume_ref_ml"] == max(volumes), "n_cases": str(len(cases)),
            "volume_error_pct": fmt_number(u["volume_error_pct"], 1, signed=True),
            "missed_ml": fmt_number(max(u["volume_ref_ml"] - overlap, 0.0), 0),
            "extra_ml": fmt_number(max(u["volume_pred_ml"] - overlap, 0.0), 0),
            "baseline_dice": fmt_number(w["baseline"]["dice"], 3)}
