"""The figures the report shows, and what the build needs to know of each as exported.

The notebooks export each figure as ``figures/<name>.{png,pdf}``
(:func:`lungseg_utils.viz.export_figure`, which records in the PNG the smallest text it
drew); :func:`figure_info` reads them for ``numbers["figures"]``, from which ``report.typ``
prints every figure at its exported width, so that its text keeps the size it was drawn at.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import LungsegInputError

#: The figures the report shows, as exported by the notebooks (``figures/<name>.{png,pdf}``);
#: the two-digit prefix names the notebook that makes each one.
REPORT_FIGURES = ("02_model_grid_round_trip", "04_training_curves", "05_dice_paired",
                  "05_worst_cases", "06_tta_uncertainty")
#: A figure wider than this (inches, as exported) is recorded as ``wide``: wider than a column,
#: so the report, which prints every figure in one column, shrinks it (and its text).
WIDE_FIGURE_IN = 4.5


def figure_info(figures_dir: Path) -> dict:
    """``{name: {"path", "width_in", "aspect", "wide", "min_font_pt"}}`` for
    :data:`REPORT_FIGURES`: where Typst finds the PDF, the exported width in inches, width /
    height, whether it is wider than a column (:data:`WIDE_FIGURE_IN`), and its smallest
    text in pt at the exported size (:func:`lungseg_utils.viz.smallest_text_pt`; None for a
    figure exported before it was recorded). Raises naming the first figure missing as PNG
    or PDF."""
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
