"""How a claim is declared, and the tests and phrases that claims of several sections share.

A :class:`Claim` is one sentence the report may print as ``numbers["say"][key]``, with the
condition on the numbers that makes it true (:mod:`lungseg_utils.report.claims` chooses and
checks them). Conditions read the numbers *as printed* (:func:`num`), so that a claim is
checked against what the reader sees: "the interval excludes zero" cannot rest on a digit
the report rounds away.

The helpers below take the numbers dict ``n`` (or one paired interval ``d``, as
``values.difference_numbers`` prints it: ``{"mean_diff", "lo", "hi", "n", "n_better"}``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable


def num(text) -> float:
    """A printed number as a float: ``"−0.0012"`` -> -0.0012, ``"+0.0010"``, ``"∞"`` -> inf,
    ``"n/a"`` or None -> nan."""
    if text is None:
        return math.nan
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    t = str(text).strip().replace("\u2212", "-").replace("+", "")
    if t in ("n/a", ""):
        return math.nan
    return float(t.replace("∞", "inf"))


@dataclass(frozen=True)
class Claim:
    """A sentence the report may print as ``numbers["say"][key]``, and when it is true."""
    id: str
    key: str
    when: Callable[[dict], bool]
    text: Callable[[dict], str]


# ----------------------------------------------------------------------------- the numbers
def native(n, m, k="dice", f="mean"):
    """Method ``m``'s printed ``k`` (``f``: mean, sd, worst_value ...) on the native grid, in
    the scored block."""
    return n["scored"]["native"][m][k][f]


def vs(n, key="native"):
    """A paired comparison with the classical pipeline (``numbers["versus"][key]``)."""
    return n["versus"][key]


def rob(n):
    """The robustness suite as printed (None or {} where the run lacks it)."""
    return n["robustness"]


def few_cases(n) -> bool:
    """Too few scored cases for a paired interval to say anything."""
    return int(n["scored"]["n"]) < int(n["facts"]["few_cases"])


# ----------------------------------------------------------------------------- intervals
def _lo(d) -> float:
    return num(d["lo"])


def _hi(d) -> float:
    return num(d["hi"])


def ahead(d) -> bool:
    """The interval lies above zero."""
    return _lo(d) > 0


def behind(d) -> bool:
    """The interval lies below zero."""
    return _hi(d) < 0


def includes_zero(d) -> bool:
    """The interval includes zero."""
    return _lo(d) <= 0 <= _hi(d)


def narrow(d) -> bool:
    """An interval around zero every value of which vanishes at three decimals."""
    return _lo(d) <= 0 <= _hi(d) and max(abs(_lo(d)), abs(_hi(d))) < 0.0005


def ci(d) -> str:
    """The interval as printed in a sentence: ``lo to hi``."""
    return f"{d['lo']} to {d['hi']}"
