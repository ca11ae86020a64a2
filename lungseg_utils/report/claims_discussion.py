"""The claims of the Discussion and the Conclusion: the run against the field's numbers
(GUIDE.md section 4; the sources are cited in ``report.typ``), and the conclusion's
sentences on the comparison, the boundary step, TTA and robustness.

Each is a :class:`~lungseg_utils.report.conditions.Claim`; :mod:`lungseg_utils.report.claims`
chooses among those of a key and checks them.
"""

from __future__ import annotations

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
    rob,
    vs,
)


def _model(n) -> str:
    """The final model, as the conclusion names it."""
    return f"{n['ensemble']['members']}-member ensemble" if n["ensemble"] else "U-Net"


DISCUSSION_CLAIMS: tuple[Claim, ...] = (
    # ---- the field (GUIDE.md section 4; the sources are cited in report.typ)
    Claim("field-dice-top", "field_dice",
          lambda n: num(native(n, "unet")) >= num(n["field"]["lctsc_dice_hi"]),
          lambda n: f"Our native-grid mean Dice, {native(n, 'unet')}, reaches the top of the "
                    "challenge's range"),
    Claim("field-dice-within", "field_dice",
          lambda n: num(n["field"]["lctsc_dice_lo"]) <= num(native(n, "unet"))
          < num(n["field"]["lctsc_dice_hi"]),
          lambda n: f"Our native-grid mean Dice, {native(n, 'unet')}, lies within the "
                    "challenge's range"),
    Claim("field-dice-below", "field_dice",
          lambda n: num(native(n, "unet")) < num(n["field"]["lctsc_dice_lo"]),
          lambda n: f"Our native-grid mean Dice, {native(n, 'unet')}, lies below the "
                    "challenge's range"),
    Claim("field-hd95-within", "field_hd95",
          lambda n: num(n["field"]["lctsc_hd95_lo"]) <= num(native(n, "unet", "hd95_mm"))
          <= num(n["field"]["lctsc_hd95_hi"]),
          lambda n: f"and its HD95, {native(n, 'unet', 'hd95_mm')} mm, lies within it"),
    Claim("field-hd95-below", "field_hd95",
          lambda n: num(native(n, "unet", "hd95_mm")) < num(n["field"]["lctsc_hd95_lo"]),
          lambda n: f"and its HD95, {native(n, 'unet', 'hd95_mm')} mm, is below it"),
    Claim("field-hd95-above", "field_hd95",
          lambda n: num(native(n, "unet", "hd95_mm")) > num(n["field"]["lctsc_hd95_hi"]),
          lambda n: f"while its HD95, {native(n, 'unet', 'hd95_mm')} mm, is above it"),

    # ---- the conclusion
    Claim("concl-ahead", "conclusion", lambda n: not few_cases(n) and ahead(vs(n)),
          lambda n: f"On these {n['scored']['n']} scans the {_model(n)}, with its boundary "
                    "redrawn at each scan's own resolution, segments both lungs better than "
                    f"the classical pipeline: ahead on {vs(n)['n_better']} of {vs(n)['n']} "
                    f"cases, with a paired interval of {ci(vs(n))} Dice that excludes zero."),
    Claim("concl-behind", "conclusion", lambda n: not few_cases(n) and behind(vs(n)),
          lambda n: f"On these {n['scored']['n']} scans the classical pipeline segments both "
                    f"lungs better than the {_model(n)}: the paired interval, {ci(vs(n))} "
                    "Dice, excludes zero."),
    Claim("concl-open", "conclusion", lambda n: few_cases(n) or includes_zero(vs(n)),
          lambda n: f"On these {n['scored']['n']} scans the {_model(n)} does not separate "
                    f"itself from the classical pipeline (paired interval {ci(vs(n))} Dice)."),
    Claim("concl-raw", "conclusion_raw",
          lambda n: not few_cases(n) and behind(vs(n, "native_raw")) and ahead(vs(n)),
          lambda n: "The network's own 5 mm mask does not get there alone."),
    Claim("concl-raw-none", "conclusion_raw", lambda n: True, lambda n: ""),
    Claim("concl-tta-none", "conclusion_tta",
          lambda n: not n["facts"]["tta_few_cases"] and narrow(n["tta"]["dice_gain_native"]),
          lambda n: "TTA makes no measurable difference on the native grid, at "
                    f"{n['facts']['tta_slowdown']}× the time."),
    Claim("concl-tta-gain", "conclusion_tta",
          lambda n: not n["facts"]["tta_few_cases"] and ahead(n["tta"]["dice_gain_native"]),
          lambda n: f"TTA adds a measurable {n['tta']['dice_gain_native']['mean_diff']} on the "
                    f"native grid, at {n['facts']['tta_slowdown']}× the time."),
    Claim("concl-tta-loss", "conclusion_tta",
          lambda n: not n["facts"]["tta_few_cases"] and behind(n["tta"]["dice_gain_native"]),
          lambda n: f"TTA lowers Dice on the native grid by "
                    f"{n['tta']['dice_gain_native']['mean_diff'].lstrip(chr(0x2212))}, at "
                    f"{n['facts']['tta_slowdown']}× the time."),
    Claim("concl-tta-open", "conclusion_tta",
          lambda n: n["facts"]["tta_few_cases"] or (includes_zero(n["tta"]["dice_gain_native"])
                                                    and not narrow(n["tta"]["dice_gain_native"])),
          lambda n: f"Whether TTA, at {n['facts']['tta_slowdown']}× the time, changes Dice on "
                    "the native grid, these cases cannot tell."),
    Claim("concl-robust", "conclusion_robust",
          lambda n: bool(rob(n)) and rob(n)["hardest"]["others_min_mean"] is not None,
          lambda n: f"Of the controlled changes, {rob(n)['hardest']['phrase']} cost the most."),
    Claim("concl-robust-none", "conclusion_robust", lambda n: True, lambda n: ""),
)
