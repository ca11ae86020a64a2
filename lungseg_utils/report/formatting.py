"""Numbers as the report and the README print them: fixed decimals by kind of value.

Dice, IoU and AUC with 3 decimals, distances and percentages with 1, a typographic minus,
``∞`` and ``n/a``; :func:`format_tree` formats a whole result file by its keys, so that the
report's Typst source and the README print the same text (see :mod:`lungseg_utils.report.build`).
"""

from __future__ import annotations

import math
import re

_MINUS = "\u2212"


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


def fmt_general(value: float) -> str:
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
    return fmt_general(float(value))


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
