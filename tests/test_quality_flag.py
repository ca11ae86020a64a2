"""The quality flag's threshold on the agreement with the classical baseline (issue #27):
chosen on the robustness suite's out-of-fold predictions, never on the independent scans, and
the constant the scan tool uses is the one the reference's robustness.json gives."""

import pytest

from lungseg_utils import config, dataio
from lungseg_utils.scan import quality
from lungseg_utils.study.robustness import OUT_OF_FOLD, choose_flag_threshold


def _rows(pairs):
    return [{"member": d, "member_vs_baseline": s} for d, s in pairs]


def test_the_threshold_catches_the_worst_at_a_bounded_false_alarm_rate():
    good = [(0.98, 0.99 - 0.001 * i) for i in range(20)]        # agreement 0.99 .. 0.971
    bad = [(0.95, 0.955), (0.96, 0.968), (0.965, 0.985)]          # the last one: not caught
    choice = choose_flag_threshold(_rows(good + bad), max_false_alarm=0.10)
    assert choice["false_alarms"] <= 2 and choice["caught"] == 2 and choice["n_below"] == 3
    assert choice["threshold"] == pytest.approx(0.9725)            # flags 0.971, 0.972 only
    strict = choose_flag_threshold(_rows(good + bad), max_false_alarm=0.0)
    assert strict["false_alarms"] == 0 and strict["threshold"] <= 0.971


def test_the_scan_tool_s_threshold_is_the_one_the_reference_s_robustness_suite_gives():
    path = config.REFERENCE_DIR / "robustness.json"
    rows = dataio.load_json(path)["rows"]
    assert any(m in rows[0] for m in OUT_OF_FOLD)
    choice = choose_flag_threshold(rows)
    assert quality.MIN_BASELINE_AGREEMENT == pytest.approx(choice["threshold"]), choice
    assert choice["sensitivity"] >= 0.5 and choice["specificity"] >= 0.9, choice
