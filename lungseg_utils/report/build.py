"""The 2-3 page PDF report and the README's results table, both built from the result files.

How a number reaches the PDF
----------------------------
1. :func:`lungseg_utils.report.values.read_results` reads the result files of a run (``results/reference/`` by default:
   ``evaluation.json``, ``tta.json``, ``train_config.json``, ``training_log.csv`` ...).
2. :func:`lungseg_utils.report.values.report_numbers` turns them into one dict in which **every number is already
   formatted as the report prints it** (Dice 3 decimals, mm 1 decimal, see
   :mod:`lungseg_utils.report.formatting`); the result files keep their own shape inside it, so
   ``evaluation.json``'s ``grid64.summary.unet.dice.mean`` is ``numbers["evaluation"]
   ["grid64"]["summary"]["unet"]["dice"]["mean"]``, a string such as ``"0.973"``.
   (Formatting here, not in Typst, because the files may hold ``NaN`` and ``Infinity``,
   which Typst's ``json()`` cannot read, and because the README table needs the same text.)
   Every sentence whose truth depends on the run is chosen there too, by
   :mod:`lungseg_utils.report.claims`: each has a condition on the numbers, a key with
   several prepared sentences prints the first whose condition holds (``numbers["say"]``,
   with the claims printed in ``numbers["claims"]``), and a claim the numbers contradict is
   named in a :class:`LungsegInputError`.
3. :func:`build_report` checks those claims once more against the numbers it typesets
   (:func:`lungseg_utils.report.claims.check`), writes the dict as ``numbers.json`` beside
   the PDF and compiles ``report/report.typ``, which reads it with Typst's ``json()``.
   ``report.typ`` is plain prose: it types no result by hand and has no branch on one; the
   figures it shows are :data:`REPORT_FIGURES`, read from ``figures/``.

``lungseg report`` (``python -m lungseg_utils.report.build``) rebuilds ``report/report.pdf``
and the README's results block in a few seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .. import config, dataio
from ..errors import LungsegInputError
from ..runs.command import run_command
from ..dataio import portable_path as rel_path  # main() prints paths as result files store them
from ..experiments import METHOD_LABELS
from . import claims
from .formatting import fmt_number, format_tree, format_value  # noqa: F401  (the report's formats)
from .figures import REPORT_FIGURES, WIDE_FIGURE_IN
from .values import (
    FEW_CASES,
    RESULT_FILES,
    read_results,
    read_training_log,
    report_numbers,
)
from .values_studies import OPTIONAL_FILES, robustness_numbers, seed_numbers

REPORT_TYP, REPORT_PDF = (config.REPO_ROOT / "report" / n for n in ("report.typ", "report.pdf"))
NUMBERS_NAME = "numbers.json"
README = config.REPO_ROOT / "README.md"
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


# ----------------------------------------------------------------------------- README
def _worst(s: dict) -> str:
    """'worst value (case)' of a formatted Dice summary."""
    return f"{s['worst_value']} ({s['worst_case_id']})"


def results_markdown(results_dir=None) -> str:
    """The README's results block: one small table, the U-Net against the classical baseline
    on the model grid and on the native grid (mean Dice, the worst case and which case it
    is), then one line that says how the cases were scored and points at the report for the
    rest (HD95, the resolution ceiling, post-processing, TTA, the studies).

    The cases are scored out of fold wherever the run allows it: an ensemble's run scores
    every case by the member that never trained on it; a single model's run with a
    cross-validation shows the cross-validation's out-of-fold scores; a single model's run
    without one, its held-out test cases."""
    n = report_numbers(results_dir)
    ev, cube, where = n["evaluation"], f"{n['grid']['shape']}³", f"`{n['results_dir']}/`"
    if n["facts"]["out_of_fold"]:
        scored, n_cases = ev, n["n_cases"]["test"]
        ensemble = (f"the {n['ensemble']['members']}-member ensemble" if n["ensemble"]
                    else "the ensemble")
        how = (f"**Out of fold:** each of the {n_cases} cases segmented by the member of "
               f"{ensemble} in {where} that never trained on it")
    elif "cross_validation" in ev:
        scored, n_cases = ev["cross_validation"], n["facts"]["cv_n_cases"]
        how = (f"**Out of fold** ({scored['folds']}-fold cross-validation of the settings of "
               f"{where}): each of the {n_cases} cases scored by the model that did not train "
               "on it")
    else:
        scored, n_cases = ev, n["n_cases"]["test"]
        how = (f"The {n_cases} held-out test cases ({', '.join(ev['test_cases'])}) of the "
               f"single model in {where}")
    lines = [f"| Dice, {n_cases} cases | {cube} grid: mean | worst case | native grid: mean "
             "| worst case |", "|---|---|---|---|---|"]
    for m in ("unet", "baseline"):
        g64, nat = (scored[g]["summary"][m]["dice"] for g in ("grid64", "native"))
        lines.append(f"| {METHOD_LABELS[m]} | {g64['mean']} | {_worst(g64)} | {nat['mean']} "
                     f"| {_worst(nat)} |")
    rest = ["HD95", "the resolution ceiling", "post-processing", "test-time augmentation"]
    rest += [what for key, what in (("robustness", "the robustness suite"), ("seeds",
             "the seed spread"), ("ksize", "how many members")) if n[key]]
    lines += ["", how + "; the native grid is each scan's own. " + ", ".join(rest[:-1])
              + f" and {rest[-1]}: [report/report.pdf](report/report.pdf) (`make report`)."]
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
        with dataio.atomic_write(path, overwrite=True) as tmp:
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
    uses as its root, so every input may live anywhere. Returns the PDF's path. Raises
    :class:`LungsegInputError` naming every sentence whose condition the run's numbers
    contradict (:mod:`lungseg_utils.report.claims`); nothing is written then.
    """
    import typst

    figures_dir = Path(figures_dir) if figures_dir is not None else config.FIGURES_DIR
    out_pdf = Path(out_pdf) if out_pdf is not None else REPORT_PDF
    values = report_numbers(results_dir, figures_dir)
    claims.check(values)      # every result-dependent sentence printed is true of these numbers
    numbers = json.dumps(values, indent=1, ensure_ascii=False)
    with _staged(numbers, figures_dir) as stage:
        try:
            pdf = typst.compile(str(stage / "report" / "report.typ"), root=str(stage),
                                sys_inputs={"numbers": NUMBERS_NAME})
        except typst.TypstError as exc:
            raise LungsegInputError(f"{REPORT_TYP}: Typst could not compile it ({exc}).") from None
    with dataio.atomic_write(out_pdf, overwrite=True) as tmp_pdf:
        tmp_pdf.write_bytes(pdf)
    with dataio.atomic_write(out_pdf.parent / NUMBERS_NAME, overwrite=True) as tmp_json:
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


def record_job(run_dir, started_unix_s: float) -> Path:
    """Write ``run_dir/job.json``: the main job's wall time from ``started_unix_s`` until
    now, this machine's CPU (model, cores, whether it has AVX-512) and the profile."""
    info = Path("/proc/cpuinfo")
    text = info.read_text() if info.exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.startswith("model name")), platform.processor() or None)
    job = {"wall_s": round(time.time() - float(started_unix_s), 1),
           "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "profile": config.profile_name(),
           "cpu": {"model": model, "logical_cpus": os.cpu_count(),
                   "avx512": " avx512f" in text, "avx2": " avx2" in text}}
    return dataio.save_json(job, Path(run_dir) / "job.json", overwrite=True)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog or "python -m lungseg_utils.report.build",
                                description=__doc__.split("\n")[0])
    p.add_argument("--results_dir", help="run folder (default $LUNGSEG_RUN, else results/reference)")
    p.add_argument("--figures_dir", default=None, help="figures folder (default figures/)")
    p.add_argument("--output", default=None, help="PDF to write (default report/report.pdf)")
    p.add_argument("--readme", default=str(README), help="README whose results block to update")
    p.add_argument("--no_readme", action="store_true", help="leave the README alone")
    p.add_argument("--job_started", type=float, metavar="UNIX_S",
                   help="when make all started: its wall time goes to RESULTS_DIR/job.json")
    return p


def run(args) -> int:
    """Build the PDF and update the README's results, from parsed ``args``; bad input raises."""
    pdf = build_report(args.results_dir, args.figures_dir, args.output)
    print(f"wrote {rel_path(pdf)} and {rel_path(pdf.parent / NUMBERS_NAME)}")
    if not args.no_readme:
        print(f"updated the results block of {rel_path(update_readme(args.readme, args.results_dir))}")
    if args.job_started is not None:
        job = record_job(args.results_dir or config.active_run_dir(), args.job_started)
        print(f"the main job took {dataio.load_json(job)['wall_s'] / 60:.1f} min ({rel_path(job)})")
    return 0


def main(argv=None, prog: str | None = None) -> int:
    """``python -m lungseg_utils.report.build`` (``lungseg report``): build the PDF and update
    the README's results; 0 done, 2 bad input."""
    return run_command(build_parser(prog), run, argv)


if __name__ == "__main__":
    sys.exit(main())
