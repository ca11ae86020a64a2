"""The claims about what the run measured (the Results, and the abstract's result): the
U-Net against the classical pipeline paired by case, the boundary step and the resolution
ceiling, post-processing, distances, the worst case and test-time augmentation.

Each is a :class:`~lungseg_utils.report.conditions.Claim`; :mod:`lungseg_utils.report.claims`
chooses among those of a key and checks them.
"""

from __future__ import annotations

import math

from .conditions import (
    Claim,
    ahead,
    behind,
    ci,
    few_cases,
    includes_zero,
    narrow,
    native,
    num,
    vs,
)


def _g64(n, m, k="dice", f="mean"):
    """Method ``m``'s printed ``k`` (``f``: mean, sd ...) on the 64^3 grid, scored block."""
    return n["scored"]["grid64"][m][k][f]


def _f(n, key) -> float:
    """A fact of ``numbers["facts"]`` as a number."""
    return num(n["facts"][key])


def _errors(n) -> str:
    """The worst case's missed and added lung, as a clause."""
    return ("From its Dice and the two volumes, the U-Net missed "
            f"{n['worst']['missed_ml']} ml of lung and added {n['worst']['extra_ml']} ml where "
            "the reference has none")


RESULT_CLAIMS: tuple[Claim, ...] = (
    # ---- U-Net against the classical pipeline, paired by case
    Claim("abstract-ahead", "abstract_result", lambda n: not few_cases(n) and ahead(vs(n)),
          lambda n: f"On the scans' own grid it reaches a mean Dice of {native(n, 'unet')} "
                    f"(worst case {native(n, 'unet', f='worst_value')}) against "
                    f"{native(n, 'baseline')} for the classical pipeline, ahead on "
                    f"{vs(n)['n_better']} of {vs(n)['n']} cases."),
    Claim("abstract-behind", "abstract_result", lambda n: not few_cases(n) and behind(vs(n)),
          lambda n: f"On the scans' own grid it reaches a mean Dice of {native(n, 'unet')}, "
                    f"behind the classical pipeline's {native(n, 'baseline')}."),
    Claim("abstract-open", "abstract_result", lambda n: few_cases(n) or includes_zero(vs(n)),
          lambda n: f"On the scans' own grid it reaches a mean Dice of {native(n, 'unet')} "
                    f"against {native(n, 'baseline')} for the classical pipeline, a difference "
                    f"these {vs(n)['n']} cases cannot separate from chance."),

    Claim("versus-few", "versus", lambda n: few_cases(n),
          lambda n: f"On the native grid the U-Net's mean Dice is {native(n, 'unet')}, the "
                    f"classical pipeline's {native(n, 'baseline')}. With {vs(n)['n']} cases the "
                    f"paired interval ({ci(vs(n))}) does no more than resample "
                    f"{vs(n)['n']} differences: it is uninformative."),
    Claim("versus-ahead", "versus", lambda n: not few_cases(n) and ahead(vs(n)),
          lambda n: f"On the native grid the U-Net's mean Dice is {native(n, 'unet')}, the "
                    f"classical pipeline's {native(n, 'baseline')}. Paired by case, the U-Net "
                    f"is ahead on {vs(n)['n_better']} of {vs(n)['n']} cases, by "
                    f"{vs(n)['mean_diff']} on average (95 % interval {ci(vs(n))}). The "
                    "interval excludes zero: among these cases the lead is not chance."),
    Claim("versus-behind", "versus", lambda n: not few_cases(n) and behind(vs(n)),
          lambda n: f"On the native grid the U-Net's mean Dice is {native(n, 'unet')}, the "
                    f"classical pipeline's {native(n, 'baseline')}. Paired by case, the U-Net "
                    f"is ahead on only {vs(n)['n_better']} of {vs(n)['n']} cases and behind "
                    f"by {vs(n)['mean_diff']} on average (95 % interval {ci(vs(n))}), an "
                    "interval that excludes zero."),
    Claim("versus-open", "versus", lambda n: includes_zero(vs(n)),
          lambda n: f"On the native grid the U-Net's mean Dice is {native(n, 'unet')}, the "
                    f"classical pipeline's {native(n, 'baseline')}. Paired by case the "
                    f"difference is {vs(n)['mean_diff']} (95 % interval {ci(vs(n))}); the "
                    "interval includes zero, so these cases do not separate the two methods."),
    Claim("versus64-ahead", "versus64", lambda n: not few_cases(n) and ahead(vs(n, "grid64")),
          lambda n: f"On the 64³ grid the lead is {vs(n, 'grid64')['mean_diff']} "
                    f"({ci(vs(n, 'grid64'))}), on {vs(n, 'grid64')['n_better']} of "
                    f"{vs(n, 'grid64')['n']} cases."),
    Claim("versus64-other", "versus64", lambda n: not ahead(vs(n, "grid64")) or few_cases(n),
          lambda n: f"On the 64³ grid the paired difference is "
                    f"{vs(n, 'grid64')['mean_diff']} ({ci(vs(n, 'grid64'))})."),

    # ---- the boundary step and the resolution ceiling (native grid)
    Claim("raw-below-ceiling", "raw", lambda n: _f(n, "raw_gap_to_ceiling") > 0,
          lambda n: f"Carried back as drawn, the network's 5 mm edge scores "
                    f"{native(n, 'unet_raw')} on the native grid, "
                    f"{n['facts']['raw_gap_to_ceiling'].lstrip('+')} below the resolution "
                    f"ceiling of {native(n, 'ceiling')}."),
    Claim("raw-at-ceiling", "raw", lambda n: _f(n, "raw_gap_to_ceiling") <= 0,
          lambda n: f"Carried back as drawn, the network's 5 mm edge scores "
                    f"{native(n, 'unet_raw')} on the native grid, no lower than the resolution "
                    f"ceiling of {native(n, 'ceiling')}."),
    Claim("refine-gain-below", "refine",
          lambda n: _f(n, "refine_gain") > 0 and _f(n, "unet_gap_to_ceiling") > 0,
          lambda n: f"Redrawing the boundary at the scan's resolution adds "
                    f"{n['facts']['refine_gain']} and brings the U-Net to {native(n, 'unet')}, "
                    f"still {n['facts']['unet_gap_to_ceiling'].lstrip('+')} below the ceiling."),
    Claim("refine-gain-above", "refine",
          lambda n: _f(n, "refine_gain") > 0 and _f(n, "unet_gap_to_ceiling") < 0,
          lambda n: f"Redrawing the boundary at the scan's resolution adds "
                    f"{n['facts']['refine_gain']} and brings the U-Net to {native(n, 'unet')}, "
                    "above the ceiling: no mask drawn on the 5 mm grid could get there, so "
                    "the image-guided step, not the network, passes it."),
    Claim("refine-gain-level", "refine",
          lambda n: _f(n, "refine_gain") > 0 and _f(n, "unet_gap_to_ceiling") == 0,
          lambda n: f"Redrawing the boundary at the scan's resolution adds "
                    f"{n['facts']['refine_gain']} and brings the U-Net to {native(n, 'unet')}, "
                    "level with the ceiling."),
    Claim("refine-no-gain", "refine", lambda n: _f(n, "refine_gain") <= 0,
          lambda n: f"Redrawing the boundary at the scan's resolution changes the mean Dice by "
                    f"{n['facts']['refine_gain']}, to {native(n, 'unet')}: it does not help here."),
    Claim("raw-classical-only-refined", "raw_vs_classical",
          lambda n: not few_cases(n) and behind(vs(n, "native_raw")) and ahead(vs(n)),
          lambda n: f"Against the classical pipeline the 5 mm edge alone is behind by "
                    f"{vs(n, 'native_raw')['mean_diff'].lstrip(chr(0x2212))} "
                    f"({ci(vs(n, 'native_raw'))}): on the native grid the U-Net is ahead "
                    "only with the refined boundary."),
    Claim("raw-classical-ahead", "raw_vs_classical",
          lambda n: not few_cases(n) and ahead(vs(n, "native_raw")),
          lambda n: f"Even the 5 mm edge alone is ahead of the classical pipeline, by "
                    f"{vs(n, 'native_raw')['mean_diff']} ({ci(vs(n, 'native_raw'))})."),
    Claim("raw-classical-other", "raw_vs_classical", lambda n: True,
          lambda n: f"Against the classical pipeline the 5 mm edge alone differs by "
                    f"{vs(n, 'native_raw')['mean_diff']} ({ci(vs(n, 'native_raw'))})."),

    # ---- post-processing: compared with the spread between cases
    Claim("post-small", "post",
          lambda n: all(abs(_f(n, f"post_gain_{g}")) < num(n["scored"][g]["unet"]["dice"]["sd"])
                        for g in ("grid64", "native")),
          lambda n: f"Post-processing changes the mean Dice by {n['facts']['post_gain_grid64']} "
                    f"on the 64³ grid and {n['facts']['post_gain_native']} on the native grid, "
                    "less than the spread between cases."),
    Claim("post-sizeable", "post", lambda n: True,
          lambda n: f"Post-processing changes the mean Dice by {n['facts']['post_gain_grid64']} "
                    f"on the 64³ grid and {n['facts']['post_gain_native']} on the native grid."),

    # ---- distances
    Claim("hd95-one-voxel", "hd95_64",
          lambda n: all(num(_g64(n, m, "hd95_mm")) == num(n["grid"]["spacing_mm"])
                        and num(_g64(n, m, "hd95_mm", "sd")) == 0
                        for m in ("unet", "unet_post", "baseline")),
          lambda n: f"On the 64³ grid every method's HD95 is {_g64(n, 'unet', 'hd95_mm')} mm "
                    "in every case: one voxel, the finest distance that grid resolves, so there "
                    "it cannot separate the methods."),
    Claim("hd95-64", "hd95_64", lambda n: True,
          lambda n: f"On the 64³ grid, where one voxel is {n['grid']['spacing_mm']} mm, the "
                    f"U-Net's HD95 is {_g64(n, 'unet', 'hd95_mm')} mm and the classical "
                    f"pipeline's {_g64(n, 'baseline', 'hd95_mm')} mm."),
    Claim("hd95-native-lower", "hd95_native",
          lambda n: num(native(n, "unet", "hd95_mm")) < num(native(n, "baseline", "hd95_mm")),
          lambda n: f"On the native grid the U-Net's mean HD95 is lower than the classical "
                    f"pipeline's ({native(n, 'unet', 'hd95_mm')} against "
                    f"{native(n, 'baseline', 'hd95_mm')} mm)."),
    Claim("hd95-native-not-lower", "hd95_native", lambda n: True,
          lambda n: f"On the native grid the U-Net's mean HD95 is "
                    f"{native(n, 'unet', 'hd95_mm')} mm, the classical pipeline's "
                    f"{native(n, 'baseline', 'hd95_mm')} mm."),

    # ---- the worst case: a direction only where missed and added lung both support it
    Claim("worst-missed", "worst_errors",
          lambda n: num(n["worst"]["missed_ml"]) >= 2 * num(n["worst"]["extra_ml"])
          and num(n["worst"]["missed_ml"]) > 0,
          lambda n: _errors(n) + ": most of its error is missed lung."),
    Claim("worst-extra", "worst_errors",
          lambda n: num(n["worst"]["extra_ml"]) >= 2 * num(n["worst"]["missed_ml"])
          and num(n["worst"]["extra_ml"]) > 0,
          lambda n: _errors(n) + ": most of its error is lung that is not there."),
    Claim("worst-both", "worst_errors",
          lambda n: 2 * num(n["worst"]["extra_ml"]) > num(n["worst"]["missed_ml"])
          and 2 * num(n["worst"]["missed_ml"]) > num(n["worst"]["extra_ml"]),
          lambda n: _errors(n) + ": neither kind of error dominates."),
    Claim("worst-none", "worst_errors",
          lambda n: num(n["worst"]["missed_ml"]) == 0 == num(n["worst"]["extra_ml"]),
          lambda n: "Its mask misses and adds less than 1 ml of lung."),
    Claim("worst-classical-better", "worst_classical",
          lambda n: num(n["worst"]["baseline_dice"]) > num(n["worst"]["dice"]),
          lambda n: "The classical pipeline does better on this case "
                    f"({n['worst']['baseline_dice']})."),
    Claim("worst-classical-worse", "worst_classical",
          lambda n: num(n["worst"]["baseline_dice"]) <= num(n["worst"]["dice"]),
          lambda n: f"The classical pipeline scores {n['worst']['baseline_dice']} on it."),

    # ---- test-time augmentation: intervals, and what TTA costs
    Claim("tta-cases-members", "tta_cases", lambda n: bool(n["ensemble"]),
          lambda n: f"over the {n['facts']['tta_n_cases']} cases, each predicted by the member "
                    "that never saw it"),
    Claim("tta-cases-single", "tta_cases", lambda n: not n["ensemble"],
          lambda n: f"over the single model's {n['facts']['tta_n_cases']} test cases"),
    *(c for g, where, gain in (("grid64", "on the 64³ grid", "dice_gain"),
                               ("native", "on the native grid", "dice_gain_native"))
      for c in (
        Claim(f"tta-{g}-few", f"tta_{g}", lambda n: n["facts"]["tta_few_cases"],
              lambda n, w=where, k=gain: f"{w.capitalize()} the mean change is "
              f"{n['tta'][k]['mean_diff']}; its 95 % interval ({ci(n['tta'][k])}) only "
              f"resamples {n['facts']['tta_n_cases']} differences and is uninformative."),
        Claim(f"tta-{g}-gain", f"tta_{g}", lambda n, k=gain: ahead(n["tta"][k]),
              lambda n, w=where, k=gain: f"{w.capitalize()} TTA raises the mean Dice by "
              f"{n['tta'][k]['mean_diff']} (95 % interval {ci(n['tta'][k])}): a measurable "
              "gain on these cases."),
        Claim(f"tta-{g}-loss", f"tta_{g}", lambda n, k=gain: behind(n["tta"][k]),
              lambda n, w=where, k=gain: f"{w.capitalize()} TTA lowers the mean Dice by "
              f"{n['tta'][k]['mean_diff'].lstrip(chr(0x2212))} (95 % interval "
              f"{ci(n['tta'][k])}), an interval that excludes zero."),
        Claim(f"tta-{g}-none", f"tta_{g}", lambda n, k=gain: narrow(n["tta"][k]),
              lambda n, w=where, k=gain: f"{w.capitalize()} the change is "
              f"{n['tta'][k]['mean_diff']} (95 % interval {ci(n['tta'][k])}). An interval this "
              "narrow around zero, every value of which vanishes at three decimals, is "
              "evidence that TTA has no measurable effect there."),
        Claim(f"tta-{g}-open", f"tta_{g}",
              lambda n, k=gain: includes_zero(n["tta"][k]) and not narrow(n["tta"][k]),
              lambda n, w=where, k=gain: f"{w.capitalize()} the change is "
              f"{n['tta'][k]['mean_diff']} (95 % interval {ci(n['tta'][k])}): too wide to "
              "show or rule out an effect."),
    )),
    Claim("tta-costs-time", "tta_cost",
          lambda n: num(n["tta"]["time_s"]["tta"]) > num(n["tta"]["time_s"]["single"]),
          lambda n: f"TTA takes {n['tta']['time_s']['tta']} s instead of "
                    f"{n['tta']['time_s']['single']} s per 64³ volume "
                    f"({n['facts']['tta_slowdown']}× the time)."),
    Claim("tta-default-on", "tta_default",
          lambda n: n["tta_default"] and num(n["tta"]["dice_gain_native"]["lo"]) >= 0,
          lambda n: "On the native grid, on which the project's segmentation command delivers "
                    "its masks, the gain is measurable: worth switching on (--tta) where the "
                    "extra time is affordable."),
    Claim("tta-default-off", "tta_default",
          lambda n: not n["tta_default"] and num(n["tta"]["dice_gain_native"]["lo"]) <= 0,
          lambda n: "On the native grid, on which the project's segmentation command delivers "
                    "its masks, there is no gain to show for the time, so the command leaves "
                    "TTA off unless asked (--tta)."),
    Claim("tta-auc", "tta_auc", lambda n: num(n["tta"]["uncertainty_error_auc"]) > 0.5,
          lambda n: f"on {n['tta']['focus_case']}, the one case measured, a wrong voxel near "
                    "the reference boundary has a higher spread than a right one with "
                    f"probability {n['tta']['uncertainty_error_auc']} (the AUC; 0.5 would be "
                    "chance)"),
    Claim("tta-auc-none", "tta_auc", lambda n: math.isnan(num(n["tta"]["uncertainty_error_auc"])),
          lambda n: f"on {n['tta']['focus_case']} its agreement with the errors could not be "
                    "measured"),
    Claim("tta-auc-chance", "tta_auc", lambda n: num(n["tta"]["uncertainty_error_auc"]) <= 0.5,
          lambda n: f"on {n['tta']['focus_case']}, though, the spread points at wrong voxels no "
                    f"better than chance (AUC {n['tta']['uncertainty_error_auc']})"),
)
