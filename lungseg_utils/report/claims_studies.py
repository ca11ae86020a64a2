"""The claims about the optional studies, each with the empty sentence (or one saying so)
where the run lacks it: the robustness suite (``robustness.json``), the seed spread of one
member (``seed_spread.json``) and how the number of members was chosen
(``ensemble_size.json``).

Each is a :class:`~lungseg_utils.report.conditions.Claim`; :mod:`lungseg_utils.report.claims`
chooses among those of a key and checks them.
"""

from __future__ import annotations

from .conditions import Claim, num, rob, vs


def _join(items) -> str:
    """``a``, ``a and b``, ``a; b; and c`` (the items may hold commas)."""
    items = list(items)
    if len(items) <= 2:
        return " and ".join(items)
    return "; ".join(items[:-1]) + "; and " + items[-1]


def _seeds_below_lead(n) -> bool:
    """The seed spread of one member is smaller than the U-Net's mean lead (or deficit)."""
    return num(n["seeds"]["max_range"]) < abs(num(vs(n)["mean_diff"]))


def _ks(n):
    """The chosen and the other candidate of ``ensemble_size.json`` (two candidates)."""
    rows = n["ksize"]["rows"]
    chosen = next(r for r in rows if r["k"] == n["ksize"]["chosen"])
    other = next(r for r in rows if r is not chosen)
    return chosen, other


def _ks_rule_holds(n) -> bool:
    """ensemble_size's rule on the printed numbers: the larger K only if its mean Dice over
    both grids is higher and its robustness worst case not lower (ties from rounding pass)."""
    c, o = _ks(n)
    larger, smaller = (c, o) if int(c["k"]) > int(o["k"]) else (o, c)
    wins = (num(larger["dice_both"]) >= num(smaller["dice_both"])
            and num(larger["rob_worst"]) >= num(smaller["rob_worst"]))
    return wins if larger is c else not (num(larger["dice_both"]) > num(smaller["dice_both"])
                                         and num(larger["rob_worst"]) > num(smaller["rob_worst"]))


STUDY_CLAIMS: tuple[Claim, ...] = (
    # ---- robustness, seeds, ensemble size: optional studies
    Claim("robust-absent", "robust", lambda n: not rob(n),
          lambda n: "The robustness suite (controlled changes of the scans) was not run for "
                    "this model."),
    Claim("robust", "robust", lambda n: bool(rob(n)),
          lambda n: f"To see how much the way a scan is taken and stored matters, each of the "
                    f"{rob(n)['n_cases']} native scans was segmented as stored and after "
                    f"{rob(n)['n_changes']} controlled "
                    f"change{'' if rob(n)['n_changes'] == '1' else 's'}, one at a time "
                    f"(Table 2). The changes were: {_join(rob(n)['changes'])}."),
    Claim("robust-result-absent", "robust_result", lambda n: not rob(n), lambda n: ""),
    Claim("robust-result", "robust_result",
          lambda n: bool(rob(n)) and rob(n)["hardest"]["others_min_mean"] is not None
          and all(num(rob(n)["hardest"]["member"]["mean"]) <= num(g["member"]["mean"])
                  for g in rob(n)["groups"]),
          lambda n: f"Under every change but {rob(n)['hardest']['phrase']}, the member that "
                    "never saw a case keeps a mean Dice of at least "
                    f"{rob(n)['hardest']['others_min_mean']}; with "
                    f"{rob(n)['hardest']['phrase']} it falls to "
                    f"{rob(n)['hardest']['member']['mean']} (worst case "
                    f"{rob(n)['hardest']['member']['worst']}), the classical pipeline to "
                    f"{rob(n)['hardest']['baseline']['mean']} "
                    f"({rob(n)['hardest']['baseline']['worst']})."),
    Claim("robust-result-one", "robust_result",
          lambda n: bool(rob(n)) and rob(n)["hardest"]["others_min_mean"] is None,
          lambda n: f"The member that never saw a case scores a mean Dice of "
                    f"{rob(n)['groups'][0]['member']['mean']} (worst case "
                    f"{rob(n)['groups'][0]['member']['worst']})."),
    Claim("robust-vs-classical-absent", "robust_vs_classical", lambda n: not rob(n), lambda n: ""),
    Claim("robust-vs-classical-all", "robust_vs_classical",
          lambda n: bool(rob(n)) and rob(n)["n_worst_above"] == rob(n)["n_shifts"],
          lambda n: "Its worst case stays above the classical pipeline's in every one of the "
                    f"{rob(n)['n_shifts']} conditions."),
    Claim("robust-vs-classical-some", "robust_vs_classical", lambda n: bool(rob(n)),
          lambda n: "Its worst case is above the classical pipeline's in "
                    f"{rob(n)['n_worst_above']} of the {rob(n)['n_shifts']} conditions."),

    Claim("seeds-absent", "seeds", lambda n: not n["seeds"], lambda n: ""),
    Claim("seeds-small", "seeds",
          lambda n: bool(n["seeds"]) and _seeds_below_lead(n),
          lambda n: f"Member {n['seeds']['fold']}, trained {n['seeds']['n_seeds']} times on the "
                    f"same cases with different random seeds (seeds {n['seeds']['seeds']}), "
                    "scored each of its held-out cases within "
                    f"{n['seeds']['max_range']} Dice across the runs: less than the U-Net's "
                    "mean difference from the classical pipeline."),
    Claim("seeds-large", "seeds",
          lambda n: bool(n["seeds"]) and not _seeds_below_lead(n),
          lambda n: f"Member {n['seeds']['fold']}, trained {n['seeds']['n_seeds']} times on the "
                    f"same cases with different random seeds (seeds {n['seeds']['seeds']}), "
                    f"scored its held-out cases up to {n['seeds']['max_range']} Dice apart "
                    "across the runs: as much as the U-Net's mean difference from the "
                    "classical pipeline, which one training run therefore cannot settle."),

    Claim("ksize-absent", "ksize", lambda n: not n["ksize"] or len(n["ksize"]["rows"]) != 2,
          lambda n: ""),
    Claim("ksize", "ksize", lambda n: bool(n["ksize"]) and _ks_rule_holds(n),
          lambda n: f"The number of members, K = {_ks(n)[0]['k']}, was chosen by measurement "
                    f"over K = {_ks(n)[1]['k']}: a mean out-of-fold Dice over both grids of "
                    f"{_ks(n)[0]['dice_both']} against {_ks(n)[1]['dice_both']} and, averaged "
                    "over the controlled changes of the Results, a member's worst case of "
                    f"{_ks(n)[0]['rob_worst']} against {_ks(n)[1]['rob_worst']}. The rule, "
                    "fixed in advance, takes the larger K only if it is better on both."),
)
