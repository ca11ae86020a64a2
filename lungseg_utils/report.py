"""The 2-3 page PDF report and the README's results table, both built from the result files.

How a number reaches the PDF
----------------------------
1. :func:`read_results` reads the result files of a run (``results/reference/`` by default:
   ``evaluation.json``, ``tta.json``, ``train_config.json``, ``training_log.csv`` ...).
2. :func:`report_numbers` turns them into one dict in which **every number is already
   formatted as the report prints it** (Dice 3 decimals, mm 1 decimal, see
   :func:`format_value`); the result files keep their own shape inside it, so
   ``evaluation.json``'s ``grid64.summary.unet.dice.mean`` is ``numbers["evaluation"]
   ["grid64"]["summary"]["unet"]["dice"]["mean"]``, a string such as ``"0.973"``.
   (Formatting here, not in Typst, because the files may hold ``NaN`` and ``Infinity``,
   which Typst's ``json()`` cannot read, and because the README table needs the same text.)
3. :func:`build_report` writes that dict as ``numbers.json`` beside the PDF and compiles
   ``report/report.typ``, which reads it with Typst's ``json()``. ``report.typ`` types no
   result by hand; the figures it shows are :data:`REPORT_FIGURES`, read from ``figures/``.

``python -m lungseg_utils.report`` rebuilds ``report/report.pdf`` and the README's results
block in a few seconds.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import shutil
import sys
import tempfile
from pathlib import Path

from . import config, experiments, io
from .errors import LungsegInputError
from .experiments import GRID_METHODS, GRIDS, check_evaluation, check_tta, rel_path
from .inference import FLIPS, REFINE_HU

REPORT_TYP, REPORT_PDF = (config.REPO_ROOT / "report" / n for n in ("report.typ", "report.pdf"))
NUMBERS_NAME = "numbers.json"
README = config.REPO_ROOT / "README.md"

#: The figures the report shows, as exported by the notebooks (``figures/<name>.{png,pdf}``);
#: the two-digit prefix names the notebook that makes each one.
REPORT_FIGURES = ("02_model_grid_round_trip", "03_augmentation_grid", "04_training_curves",
                  "05_dice_boxplot", "05_worst_cases", "06_tta_uncertainty")
#: The result files of a run that the report reads.
RESULT_FILES = ("split.json", "train_config.json", "training_log.csv", "test_metrics.json",
                "evaluation.json", "tta.json")
#: How methods are named in the tables (report and README alike).
METHOD_LABELS = {"unet_raw": "U-Net, 5 mm edge", "unet": "U-Net",
                 "unet_post": "U-Net + post-processing", "baseline": "Classical baseline",
                 "ceiling": "Resolution ceiling"}
#: Fewer cases than this and a bootstrap interval is described as uninformative: it can only
#: resample the few per-case differences, so it is little more than their range.
FEW_CASES = 5
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"
#: A figure wider than this (inches, as exported) spans both columns of the report.
WIDE_FIGURE_IN = 4.5

_MINUS = "\u2212"


# ----------------------------------------------------------------------------- formatting
def fmt_number(value, decimals: int, signed: bool = False) -> str:
    """``value`` with a fixed number of decimals, a typographic minus, ``∞`` and ``n/a``.

    >>> fmt_number(0.97349, 3), fmt_number(-0.0042, 3, signed=True), fmt_number(0.0021, 3, True)
    ('0.973', '−0.004', '+0.002')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    value = float(value)
    if math.isinf(value):
        return ("+" if signed else "") + "∞" if value > 0 else _MINUS + "∞"
    text = f"{value:.{decimals}f}"
    if float(text) == 0.0:
        text = text.lstrip("-")  # no "-0.000"
    if signed and not text.startswith("-"):
        text = "+" + text
    return text.replace("-", _MINUS)


def _fmt_general(value: float) -> str:
    """Settings such as 0.5, 1e-3 or 1e-5: short, with a power of ten below 0.001."""
    if value != 0 and abs(value) < 1e-3:
        mantissa, exp = f"{value:.0e}".split("e")
        sup = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
        return f"{mantissa}×10{str(int(exp)).translate(sup)}".replace("-", _MINUS)
    return f"{value:g}".replace("-", _MINUS)


def format_value(key: str, value, context: str = "") -> str:
    """Format one number of a result file, by its key (and the key above it).

    Dice, IoU and AUC: 3 decimals (a Dice gain ``dice_gain*``: signed, 4); distances ``*_mm`` and
    percentages ``*_pct``: 1 decimal; volumes ``*_ml``: 0; times ``*_s``: 2; ``ci``: a
    percentage (0.95 -> "95"); integers as they are; any other number (settings such as a
    learning rate) in short general form. ``context`` is the nearest enclosing key that
    names a metric, so that ``summary.unet.dice.mean`` counts as a Dice.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    names = [k for k in (key, context) if k]
    if key == "ci":
        return fmt_number(100 * value, 0)
    if isinstance(value, int):
        return str(value).replace("-", _MINUS)
    for name in names:
        if name.startswith("dice_gain"):  # differences of a few thousandths: 4 decimals
            return fmt_number(value, 4, signed=True)
        if name.startswith(("dice", "iou", "val_dice", "val_iou")) or name.endswith("auc"):
            return fmt_number(value, 3)
        if name.endswith(("_mm", "_pct")):
            return fmt_number(value, 1)
        if name.endswith("_ml"):
            return fmt_number(value, 0)
        if name.endswith("_s") or name == "time_s":
            return fmt_number(value, 2)
    return _fmt_general(float(value))


_METRIC_KEY = re.compile(r"^(dice|iou|hd95|assd|volume|time_s|.*_(mm|ml|pct|s)$|.*auc$)")


def format_tree(obj, key: str = "", context: str = ""):
    """A copy of a JSON tree with every number replaced by its printed text (see
    :func:`format_value`); dicts and lists keep their shape, strings and booleans stay."""
    if isinstance(obj, dict):
        ctx = key if key and _METRIC_KEY.match(key) else context
        return {k: format_tree(v, k, ctx) for k, v in obj.items()}
    if isinstance(obj, list):
        return [format_tree(v, key, context) for v in obj]
    return format_value(key, obj, context)


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
    raw = {Path(n).stem: io.load_json(folder / n) for n in RESULT_FILES if n.endswith(".json")}
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
        "final_lr": _fmt_general(lr) if lr is not None else "n/a",
        "lr_reduced": lr is not None and lr0 is not None and lr < lr0,
        "wall_time_min": fmt_number(wall_s / 60.0, 0) if wall_s else "n/a",
        "params_m": fmt_number(params / 1e6, 2) if params else "n/a",
        "keras": str(versions.get("keras", "?")),
        "tensorflow": str(versions.get("tensorflow", "?")),
    }


def _figure_info(figures_dir: Path) -> dict:
    """``{name: {"path", "width_in", "aspect", "wide"}}`` for :data:`REPORT_FIGURES`: where
    Typst finds the PDF, the exported width in inches, width / height, and whether it spans
    both columns. Raises naming the first figure missing as PNG or PDF."""
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
        info[name] = {"path": f"/figures/{name}.pdf", "width_in": round(w_px / dpi, 2),
                      "aspect": round(w_px / h_px, 4), "wide": w_px / dpi > WIDE_FIGURE_IN}
    return info


def report_numbers(results_dir=None, figures_dir=None) -> dict:
    """Everything ``report.typ`` prints, as text (see the module docstring).

    Keys: ``evaluation``, ``tta`` and ``split``, each the file with its numbers formatted;
    ``settings`` (the run's settings, formatted) and ``augment``; ``training`` (from the
    log and ``test_metrics.json``); ``grid`` (the model grid of :mod:`config`); ``facts``
    (what the prose hangs on); ``compare`` and ``tta_table``; ``labels`` (method names);
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
    n_tta = min(len(tta_rows["grid64"]), len(tta_rows["native"]))
    numbers = {
        "about": "Generated by lungseg_utils.report from the result files; every number "
                 "is formatted as report.typ prints it. Do not edit: run make report.",
        "results_dir": rel_path(raw["results_dir"]),
        "run": experiments.run_identity(raw["results_dir"]),
        "labels": METHOD_LABELS,
        "grid": {"shape": str(config.MODEL_SHAPE[0]),
                 "spacing_mm": fmt_number(config.MODEL_SPACING_MM, 0),
                 "extent_mm": fmt_number(config.MODEL_SHAPE[0] * config.MODEL_SPACING_MM, 0),
                 "hu_low": fmt_number(hu[0], 0), "hu_high": fmt_number(hu[1], 0),
                 "tta_flips": str(len(FLIPS)), "refine_hu": fmt_number(REFINE_HU, 0)},
        "n_cases": {k: str(len(raw["split"][k])) for k in ("train", "val", "test")}
                   | {"all": str(sum(len(raw["split"][k]) for k in ("train", "val", "test")))},
        "settings": format_tree(settings),
        "augment": format_tree({**settings, **(cfg.get("augment") or {})}),
        "training": training_summary(cfg, raw["training_log"], raw["test_metrics"]),
        "facts": {
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
    for stem in ("evaluation", "tta", "split"):
        numbers[stem] = format_tree(raw[stem])
    if figures_dir is not None:
        numbers["figures"] = _figure_info(Path(figures_dir))
    return numbers


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


# ----------------------------------------------------------------------------- README
def _pm(summary: dict) -> str:
    """'mean ± sd' of a formatted summary; just the mean when the SD is undefined."""
    sd = summary["sd"]
    return summary["mean"] if sd == "n/a" else f"{summary['mean']} ± {sd}"


def results_markdown(results_dir=None) -> str:
    """A small Markdown table of the headline results (the README's results block)."""
    n = report_numbers(results_dir)
    ev, tta = n["evaluation"], n["tta"]
    cube = f"{n['grid']['shape']}³"
    rows = [f"| Method | Dice, {cube} grid | Dice, native grid | HD95 (mm), native grid |",
            "|---|---|---|---|"]
    for m in GRID_METHODS["native"]:
        nat = ev["native"]["summary"][m]
        g64 = ev["grid64"]["summary"].get(m)
        rows.append(f"| {METHOD_LABELS[m]} | {_pm(g64['dice']) if g64 else '—'} "
                    f"| {_pm(nat['dice'])} | {_pm(nat['hd95_mm'])} |")
    g, gn = tta["dice_gain"], tta["dice_gain_native"]
    worst = ev["native"]["summary"]["unet"]["dice"]
    lines = [
        f"Mean ± SD over the {n['n_cases']['test']} held-out test cases "
        f"({', '.join(ev['test_cases'])}) of the single model of `{n['results_dir']}/` "
        f"(profile `{n['training']['profile']}`, {n['training']['epochs_run']} "
        f"epochs). *U-Net* is the inference pipeline, which redraws the network's boundary at "
        f"the scan's resolution (lung below {n['grid']['refine_hu']} HU within one model voxel "
        f"of it); *U-Net, 5 mm edge* is the network's probability carried back and thresholded "
        f"without that step; the resolution ceiling is the reference mask taken to the {cube} "
        "grid and back.", "", *rows]
    if "cross_validation" in ev:
        cv = ev["cross_validation"]
        c64, cnat = cv["grid64"]["summary"], cv["native"]["summary"]
        lines += ["", f"Out of fold ({cv['folds']}-fold cross-validation, each of the "
                  f"{n['facts']['cv_n_cases']} cases scored by the model that did not train on "
                  "it), mean ± SD (worst case):", "",
                  f"| Method | Dice, {cube} grid | Dice, native grid |", "|---|---|---|"]
        for m in ("unet", "baseline", "ceiling"):
            cells = [f"{_pm(s[m]['dice'])} ({s[m]['dice']['worst_value']}, "
                     f"{s[m]['dice']['worst_case_id']})" if m in s else "—" for s in (c64, cnat)]
            lines.append(f"| {METHOD_LABELS[m]} | {cells[0]} | {cells[1]} |")
    lines += [
        "", f"Worst U-Net test case (native grid): {worst['worst_case_id']} "
        f"(Dice {worst['worst_value']}). Test-time augmentation ({n['grid']['tta_flips']} "
        f"flips, {n['facts']['tta_n_cases']} cases) changed Dice by {g['mean_diff']} on the "
        f"{cube} grid and {gn['mean_diff']} on the native grid (95% bootstrap CIs {g['lo']} to "
        f"{g['hi']} and {gn['lo']} to {gn['hi']}"
        + ("; with so few cases these intervals say little" if n["facts"]["tta_few_cases"] else "")
        + f"). Generated from `{n['results_dir']}/` by `make report`; details in "
        "[report/report.pdf](report/report.pdf)."]
    return "\n".join(lines)


def update_readme(readme_path=None, results_dir=None) -> Path:
    """Replace the text between ``<!-- results:start -->`` and ``<!-- results:end -->`` of
    ``readme_path`` (default README.md) with :func:`results_markdown`; the rest is kept."""
    path = Path(readme_path) if readme_path is not None else README
    if not path.is_file():
        raise LungsegInputError(f"{path}: file is missing.")
    text = path.read_text(encoding="utf-8")
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise LungsegInputError(f"{path}: needs the markers {README_START} and {README_END}, "
                                "in that order.")
    block = results_markdown(results_dir)
    new = text[: start + len(README_START)] + "\n" + block + "\n" + text[end:]
    if new != text:
        with io.atomic_write(path, overwrite=True) as tmp:
            tmp.write_text(new, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- the PDF
def build_report(results_dir=None, figures_dir=None, out_pdf=None) -> Path:
    """Compile ``report/report.typ`` into ``out_pdf`` (default ``report/report.pdf``) from
    the result files in ``results_dir`` (default ``results/reference``, see
    :data:`RESULT_FILES`) and the figures of :data:`REPORT_FIGURES` in ``figures_dir``
    (default ``config.FIGURES_DIR``); ``numbers.json``, the numbers it prints, goes beside it.

    The document, its numbers and the figures are staged in a temporary folder that Typst
    uses as its root, so every input may live anywhere. Returns the PDF's path.
    """
    import typst

    figures_dir = Path(figures_dir) if figures_dir is not None else config.FIGURES_DIR
    out_pdf = Path(out_pdf) if out_pdf is not None else REPORT_PDF
    numbers = json.dumps(report_numbers(results_dir, figures_dir), indent=1, ensure_ascii=False)
    with tempfile.TemporaryDirectory(prefix="lungseg_report_") as tmp:
        stage = Path(tmp)
        (stage / "report").mkdir()
        (stage / "figures").mkdir()
        shutil.copy(REPORT_TYP, stage / "report" / "report.typ")
        (stage / "report" / NUMBERS_NAME).write_text(numbers, encoding="utf-8")
        for name in REPORT_FIGURES:
            shutil.copy(figures_dir / f"{name}.pdf", stage / "figures" / f"{name}.pdf")
        try:
            pdf = typst.compile(str(stage / "report" / "report.typ"), root=str(stage),
                                sys_inputs={"numbers": NUMBERS_NAME})
        except typst.TypstError as exc:
            raise LungsegInputError(f"{REPORT_TYP}: Typst could not compile it ({exc}).") from None
    with io.atomic_write(out_pdf, overwrite=True) as tmp_pdf:
        tmp_pdf.write_bytes(pdf)
    with io.atomic_write(out_pdf.parent / NUMBERS_NAME, overwrite=True) as tmp_json:
        tmp_json.write_text(numbers, encoding="utf-8")
    return out_pdf


def main(argv=None) -> int:
    """``python -m lungseg_utils.report``: build the PDF and update the README's results."""
    p = argparse.ArgumentParser(prog="python -m lungseg_utils.report", description=__doc__.split("\n")[0])
    p.add_argument("--results_dir", help="run folder (default $LUNGSEG_RUN, else results/reference)")
    p.add_argument("--figures_dir", default=None, help="figures folder (default figures/)")
    p.add_argument("--output", default=None, help="PDF to write (default report/report.pdf)")
    p.add_argument("--readme", default=str(README), help="README whose results block to update")
    p.add_argument("--no_readme", action="store_true", help="leave the README alone")
    p.add_argument("--job_started", type=float, metavar="UNIX_S",
                   help="when make all started: its wall time goes to RESULTS_DIR/job.json")
    args = p.parse_args(argv)
    try:
        pdf = build_report(args.results_dir, args.figures_dir, args.output)
        print(f"wrote {rel_path(pdf)} and {rel_path(pdf.parent / NUMBERS_NAME)}")
        if not args.no_readme:
            print(f"updated the results block of {rel_path(update_readme(args.readme, args.results_dir))}")
        if args.job_started is not None:
            job = experiments.record_job(args.results_dir or config.active_run_dir(), args.job_started)
            print(f"the main job took {io.load_json(job)['wall_s'] / 60:.1f} min ({rel_path(job)})")
    except LungsegInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
