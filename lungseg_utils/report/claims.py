"""The report's sentences that depend on a run's numbers, each with the condition that makes
it true.

``report.typ`` states no result-dependent claim itself and has no branch on a result: where
its prose depends on what a run measured (or on how it was trained), it prints a sentence
of ``numbers["say"]``. Each sentence is a :class:`Claim`: an id, the key it fills, a
condition on the numbers and the text. A key with several claims is a choice prepared in
advance, because a student's own short run may legitimately come out otherwise than the
reference: :func:`say` prints the first claim whose condition holds (a missing optional
study has a claim of its own, often the empty sentence). A key whose claims are all
contradicted stops the build with a :class:`LungsegInputError` that names them; so does a
key with a single claim (a claim the report always makes, such as "TTA takes longer than
one pass") when the numbers contradict it.

:func:`check` re-tests the claims a numbers dict records as printed (``numbers["claims"]``,
key -> claim id) against that dict's numbers and names every one they contradict; the build
runs it on the very numbers it typesets.

The claims themselves are declared by section, each a
:class:`~lungseg_utils.report.conditions.Claim` (where the condition reads the numbers as
printed, :func:`~lungseg_utils.report.conditions.num`): how the run was scored and trained
(:mod:`~lungseg_utils.report.claims_methods`), what it measured
(:mod:`~lungseg_utils.report.claims_results`), the optional studies
(:mod:`~lungseg_utils.report.claims_studies`), the field and the conclusion
(:mod:`~lungseg_utils.report.claims_discussion`). :data:`CLAIMS` is all of them, in that
order, which is the order of the choice.
"""

from __future__ import annotations

from ..errors import LungsegInputError
from .claims_discussion import DISCUSSION_CLAIMS
from .claims_methods import METHOD_CLAIMS
from .claims_results import RESULT_CLAIMS
from .claims_studies import STUDY_CLAIMS
from .conditions import Claim

#: Every claim the report may print; for each key, the first whose condition holds is printed.
CLAIMS: tuple[Claim, ...] = METHOD_CLAIMS + RESULT_CLAIMS + STUDY_CLAIMS + DISCUSSION_CLAIMS


def typeset(text: str) -> str:
    """A sentence as printed: no line break before a unit's % or after "K =", and
    typographic apostrophes (Typst sets a string's characters as they are)."""
    return (text.replace(" %", "\u00a0%").replace("K = ", "K\u00a0=\u00a0")
            .replace("'", "\u2019"))


def _by_key() -> dict[str, list[Claim]]:
    keys: dict[str, list[Claim]] = {}
    for c in CLAIMS:
        keys.setdefault(c.key, []).append(c)
    return keys


def _holds(claim: Claim, numbers: dict) -> bool:
    """A claim's condition on ``numbers``; a condition that cannot be evaluated (a number
    missing, a study absent) does not hold."""
    try:
        return bool(claim.when(numbers))
    except (KeyError, TypeError, ValueError, IndexError, StopIteration):
        return False


def say(numbers: dict) -> tuple[dict, dict]:
    """``(sentences, printed)``: for every key of :data:`CLAIMS`, the text of the first claim
    whose condition ``numbers`` satisfy, and that claim's id. Raises
    :class:`LungsegInputError` naming every key none of whose claims holds (with the ids of
    the contradicted claims)."""
    sentences, printed, failed = {}, {}, []
    for key, claims in _by_key().items():
        chosen = next((c for c in claims if _holds(c, numbers)), None)
        if chosen is None:
            failed.append(f"{key} ({', '.join(c.id for c in claims)})")
            continue
        sentences[key], printed[key] = typeset(chosen.text(numbers)), chosen.id
    if failed:
        raise LungsegInputError("the run's numbers contradict every sentence the report has "
                                "for: " + "; ".join(failed)
                                + " (lungseg_utils/report/claims_*.py).")
    return sentences, printed


def contradicted(numbers: dict) -> list[str]:
    """The ids of the claims ``numbers["claims"]`` records as printed whose conditions
    ``numbers`` do not satisfy (an unknown id counts as contradicted)."""
    ids = {c.id: c for c in CLAIMS}
    return [cid for cid in (numbers.get("claims") or {}).values()
            if cid not in ids or not _holds(ids[cid], numbers)]


def check(numbers: dict) -> None:
    """Raise :class:`LungsegInputError` naming every printed claim (``numbers["claims"]``)
    whose condition ``numbers`` contradict, and every key of :data:`CLAIMS` with no sentence."""
    bad = contradicted(numbers)
    missing = sorted(set(_by_key()) - set(numbers.get("claims") or {}))
    if bad or missing:
        raise LungsegInputError(
            "report claims contradicted by the run's numbers: "
            + (", ".join(bad) or "none") + (f"; no sentence for: {', '.join(missing)}"
                                            if missing else "") + ".")
