"""The result files' schema, as the report reads them: what ``evaluation.json`` (notebook 05)
and ``tta.json`` (notebook 06) must hold.

:func:`check_evaluation` and :func:`check_tta` raise :class:`LungsegInputError` naming the
first thing a file lacks and what to re-run; :mod:`lungseg_utils.report.values` checks every
file it reads. The files are built by :func:`lungseg_utils.experiments.evaluation_result`
and :func:`lungseg_utils.experiments.tta_result`, whose names for grids, methods and rows
(:data:`~lungseg_utils.experiments.GRIDS`, ``GRID_METHODS``, ``TTA_ROW_KEYS``) are used here.
"""

from __future__ import annotations

from ..errors import LungsegInputError
from ..experiments import GRID_METHODS, GRIDS, TTA_ROW_KEYS


def _need(tree: dict, dotted: str, where: str):
    """``tree[a][b]...`` for ``dotted`` "a.b...", or an error naming ``where`` and the key."""
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise LungsegInputError(f"{where}: missing {dotted!r}; re-run the notebook that "
                                    "writes it (05: evaluation.json, 06: tta.json).")
        node = node[part]
    return node


def _check_grids(block: dict, where: str) -> None:
    for grid, methods in GRID_METHODS.items():
        cases = _need(block, f"{grid}.cases", where)
        if not cases:
            raise LungsegInputError(f"{where}: {grid}.cases is empty; re-run notebook 05 "
                                    "with the native scans available.")
        for case in cases:
            for m in methods:
                _need(case, f"{m}.dice", f"{where} {grid}.cases[{case.get('case_id')}]")
        for m in methods:
            for metric in ("dice", "hd95_mm"):
                for stat in ("mean", "sd", "median", "worst_case_id", "worst_value"):
                    _need(block, f"{grid}.summary.{m}.{metric}.{stat}", where)


def check_evaluation(ev: dict, where: str = "evaluation.json") -> dict:
    """Raise :class:`LungsegInputError` naming the first thing ``evaluation.json`` lacks.

    Needs ``test_cases``; for both grids (and in ``cross_validation``, if present, with
    ``folds``) rows with every method of :data:`GRID_METHODS` and the summaries of Dice and
    HD95 (mean, SD, median, worst). Returns ``ev``.
    """
    _need(ev, "test_cases", where)
    _check_grids(ev, where)
    if "cross_validation" in ev:
        _need(ev, "cross_validation.folds", where)
        _check_grids(ev["cross_validation"], f"{where} cross_validation")
    return ev


def check_tta(tta: dict, where: str = "tta.json") -> dict:
    """Raise :class:`LungsegInputError` naming the first thing ``tta.json`` lacks: rows with
    :data:`TTA_ROW_KEYS` (``grid`` a key of :data:`GRIDS`), both times, both gains with
    ``mean_diff``, ``lo``, ``hi`` and ``ci``. Returns ``tta``."""
    for key in ("cases", "time_s.single", "time_s.tta"):
        _need(tta, key, where)
    for gain in ("dice_gain", "dice_gain_native"):
        for stat in ("mean_diff", "lo", "hi", "ci"):
            _need(tta, f"{gain}.{stat}", where)
    for i, row in enumerate(tta["cases"]):
        for key in TTA_ROW_KEYS:
            _need(row, key, f"{where} cases[{i}]")
        if row["grid"] not in GRIDS:
            raise LungsegInputError(f"{where} cases[{i}]: grid {row['grid']!r} is not one of "
                                    f"{', '.join(GRIDS)}.")
    return tta
