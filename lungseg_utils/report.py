"""The 2-3 page PDF report and the README's results table, both built from the result files.

How a number reaches the PDF
----------------------------
1. :func:`lungseg_utils.numbers.read_results` reads the result files of a run (``results/reference/`` by default:
   ``evaluation.json``, ``tta.json``, ``train_config.json``, ``training_log.csv`` ...).
2. :func:`lungseg_utils.numbers.report_numbers` turns them into one dict in which **every number is already
   formatted as the report prints it** (Dice 3 decimals, mm 1 decimal, see
   :mod:`lungseg_utils.formatting`); the result files keep their own shape inside it, so
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
import contextlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

from . import config, experiments, io
from .errors import LungsegInputError
from .experiments import GRID_METHODS, rel_path
from .formatting import fmt_number, format_tree, format_value  # noqa: F401  (the report's formats)
from .numbers import (FEW_CASES, METHOD_LABELS, OPTIONAL_FILES, REPORT_FIGURES,  # noqa: F401
                      RESULT_FILES, WIDE_FIGURE_IN, read_results, read_training_log,
                      report_numbers, robustness_numbers, seed_numbers)

REPORT_TYP, REPORT_PDF = (config.REPO_ROOT / "report" / n for n in ("report.typ", "report.pdf"))
NUMBERS_NAME = "numbers.json"
README = config.REPO_ROOT / "README.md"
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


# ----------------------------------------------------------------------------- README
def _flag_sentence(flag: dict) -> str:
    """One paragraph on the quality flag's measured power (numbers.flag_numbers)."""
    m, e = flag["member"], flag["ensemble_all"]
    text = (f"**Quality flag** (how well what it looks at finds the predictions with Dice "
            f"below {m['dice_below']}, over the suite's {m['n']} scans and shifts; AUC 0.5 is "
            f"chance): out of fold, one member's agreement with the classical baseline has AUC "
            f"{m['scores']['vs_baseline']['auc']} for its {m['n_below']} such predictions "
            f"(Spearman's ρ with Dice {m['scores']['vs_baseline']['spearman']}).")
    if e["n_below"] != "0":
        text += (f" For the shipped ensemble ({e['n_below']} such predictions; optimistic, its "
                 f"members mostly saw the case) the members' agreement has AUC "
                 f"{e['scores']['members']['auc']} and the baseline's "
                 f"{e['scores']['vs_baseline']['auc']}.")
    else:
        text += (" The shipped ensemble has no prediction below that Dice here (optimistic: its "
                 "members mostly saw the case), so its flag's power cannot be measured on these "
                 "scans.")
    if "flag" in e:
        text += (f" The flag itself said *check* for {e['flag']['flagged']} of {e['n']} of the "
                 f"ensemble's predictions.")
    return text


def _pm(summary: dict) -> str:
    """'mean ± sd' of a formatted summary; just the mean when the SD is undefined."""
    sd = summary["sd"]
    return summary["mean"] if sd == "n/a" else f"{summary['mean']} ± {sd}"


def _with_worst(s: dict) -> str:
    """'mean ± sd (worst value, case)' of a formatted Dice summary."""
    return f"{_pm(s)} ({s['worst_value']}, {s['worst_case_id']})"


def results_markdown(results_dir=None) -> str:
    """A small Markdown summary of the headline results (the README's results block): the
    cases as scored (out of fold when the run is an ensemble), then the robustness suite and
    the seed spread where the run has them, then TTA."""
    n = report_numbers(results_dir)
    ev, tta, oof = n["evaluation"], n["tta"], n["facts"]["out_of_fold"]
    cube = f"{n['grid']['shape']}³"
    if oof:
        lead = (f"**Out of fold:** each of the {n['n_cases']['test']} cases segmented by the "
                f"member of the {n['ensemble']['members']}-member ensemble in "
                f"`{n['results_dir']}/` (profile `{n['training']['profile']}`) that never "
                "trained on it. Mean ± SD (worst case).")
    else:
        lead = (f"Mean ± SD (worst case) over the {n['n_cases']['test']} held-out test cases "
                f"({', '.join(ev['test_cases'])}) of the single model of `{n['results_dir']}/` "
                f"(profile `{n['training']['profile']}`).")
    lines = [lead + f" *U-Net* is the inference pipeline, which redraws the network's "
             f"boundary at the scan's resolution (lung below {n['grid']['refine_hu']} HU within "
             f"one model voxel of it); *U-Net, 5 mm edge* is the network's probability carried "
             f"back without that step; the resolution ceiling is the reference mask taken to "
             f"the {cube} grid and back.", "",
             f"| Method | Dice, {cube} grid | Dice, native grid | HD95 (mm), native grid |",
             "|---|---|---|---|"]
    for m in GRID_METHODS["native"]:
        nat, g64 = ev["native"]["summary"][m], ev["grid64"]["summary"].get(m)
        lines.append(f"| {METHOD_LABELS[m]} | {_with_worst(g64['dice']) if g64 else '—'} "
                     f"| {_with_worst(nat['dice'])} | {_pm(nat['hd95_mm'])} |")
    if "cross_validation" in ev:             # a split-scored run with a cross-validation too
        cv = ev["cross_validation"]
        lines += ["", f"Out of fold ({cv['folds']}-fold cross-validation, each of the "
                  f"{n['facts']['cv_n_cases']} cases scored by the model that did not train on "
                  "it), mean ± SD (worst case):", "",
                  f"| Method | Dice, {cube} grid | Dice, native grid |", "|---|---|---|"]
        lines += [f"| {METHOD_LABELS[m]} | " + " | ".join(
            _with_worst(cv[g]["summary"][m]["dice"]) if m in cv[g]["summary"] else "—"
            for g in ("grid64", "native")) + " |" for m in ("unet", "baseline", "ceiling")]
    if n["robustness"]:
        r = n["robustness"]
        lines += ["", f"**Robustness suite** (`make robustness`): the {r['n_cases']} native "
                  "scans under controlled shifts, Dice mean (worst case). *One member* is the "
                  "model that never saw the case; the *shipped ensemble*'s other members did "
                  "see it, so its column is optimistic"
                  + (f"; *{r['labels'].get('ensemble_oof')}* averages, for each case, the "
                     f"member of each of {r['n_unseen']} cross-validations (listed in "
                     "`robustness.json`) that never saw it" if "ensemble_oof" in r["methods"]
                     else "") + ".", "",
                  "| Shift | " + " | ".join(r["labels"][m] for m in r["methods"]) + " |",
                  "|---" * (1 + len(r["methods"])) + "|"]
        lines += ["| " + row["shift"] + " | " + " | ".join(
            f"{row[m]['mean']} ({row[m]['worst']})" for m in r["methods"]) + " |"
            for row in r["rows"]]
        if r["flag"]:
            lines += ["", _flag_sentence(r["flag"])]
    if n["ksize"]:
        ks = n["ksize"]
        lines += ["", f"**How many members** (`ensemble_size.json`): K = {ks['chosen']}, chosen "
                  "by measurement; the larger K only if its members are better out of fold and "
                  "no less sturdy under the shifts.", "",
                  f"| K | cases a member trained on | MB | member Dice out of fold, {cube} "
                  "(worst) | native (worst) | robustness worst, mean over shifts |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['k']} | {r['train_cases']} | {r['mb']} | {r['dice_grid64']} "
                  f"({r['worst_grid64']}) | {r['dice_native']} ({r['worst_native']}) | "
                  f"{r['rob_worst']} |" for r in ks["rows"]]
    if n["seeds"]:
        sd = n["seeds"]
        lines += ["", f"**Seed spread:** member {sd['fold']} trained with seeds {sd['seeds']} "
                  f"(same cases and settings) differs by up to {sd['max_range']} Dice on its "
                  "unseen cases."]
    g, gn = tta["dice_gain"], tta["dice_gain_native"]
    lines += [
        "", f"Test-time augmentation ({n['grid']['tta_flips']} flips, "
        f"{n['facts']['tta_n_cases']} cases) changed Dice by {g['mean_diff']} on the "
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
@contextlib.contextmanager
def _staged(numbers: str, figures_dir: Path):
    """A temporary Typst root holding ``report/report.typ``, its numbers and the figures."""
    with tempfile.TemporaryDirectory(prefix="lungseg_report_") as tmp:
        stage = Path(tmp)
        (stage / "report").mkdir()
        (stage / "figures").mkdir()
        shutil.copy(REPORT_TYP, stage / "report" / "report.typ")
        (stage / "report" / NUMBERS_NAME).write_text(numbers, encoding="utf-8")
        for name in REPORT_FIGURES:
            shutil.copy(figures_dir / f"{name}.pdf", stage / "figures" / f"{name}.pdf")
        yield stage


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
    with _staged(numbers, figures_dir) as stage:
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


def printed_figures(results_dir=None, figures_dir=None) -> list[dict]:
    """Each figure as the report prints it: ``{"name", "width_pt" (printed), "exported_in",
    "min_font_pt" (at the exported size, or None if not recorded), "printed_min_font_pt"}``,
    read back from the compiled document (its ``<printed-figure>`` metadata)."""
    import typst

    figures_dir = Path(figures_dir) if figures_dir is not None else config.FIGURES_DIR
    numbers = json.dumps(report_numbers(results_dir, figures_dir), ensure_ascii=False)
    with _staged(numbers, figures_dir) as stage:
        found = json.loads(typst.query(str(stage / "report" / "report.typ"), "<printed-figure>",
                                       field="value", root=str(stage),
                                       sys_inputs={"numbers": NUMBERS_NAME}))
    for f in found:
        scale = f["width_pt"] / (72.0 * f["exported_in"])
        f["printed_min_font_pt"] = None if f["min_font_pt"] is None else f["min_font_pt"] * scale
    return found


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
