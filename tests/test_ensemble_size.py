"""lungseg_utils.study.ensemble_size: each candidate's members scored out of fold, its robustness
column found by its place in the suite's ensemble list, and the rule that chooses K."""

import pytest

from lungseg_utils.study import ensemble_size
from lungseg_utils import inference, dataio, metrics
from lungseg_utils.errors import LungsegInputError


def _cand(k, dice, worst):
    return {"k": k, "folder": f"k{k}", "dice_mean_both_grids": dice,
            "robustness": {"mean_of_worst": worst}}


@pytest.mark.parametrize("dice, worst, chosen", [
    (0.986, 0.960, 5),          # better out of fold and sturdier: the larger K
    (0.986, 0.950, 3),          # better out of fold, but its worst cases are lower
    (0.984, 0.970, 3),          # sturdier, but lower out of fold
    (0.985, 0.960, 3),          # a tie out of fold keeps the smaller K
])
def test_the_larger_k_must_win_on_both_counts(dice, worst, chosen):
    result = ensemble_size.choose([_cand(5, dice, worst), _cand(3, 0.985, 0.955)])
    assert result["k"] == chosen and result["folder"] == f"k{chosen}"
    assert result["why"][0].startswith("K=5 vs K=3")


def test_a_candidate_without_a_robustness_column_is_refused():
    with pytest.raises(LungsegInputError, match="no robustness column"):
        ensemble_size.choose([_cand(3, 0.98, 0.95), {**_cand(5, 0.99, 0.96), "robustness": None}])


def test_candidate_scores_each_case_with_its_unseen_member(smoke_cv, demo_data, tmp_path):
    out = smoke_cv[0]
    suite = {"ensembles": [str(tmp_path / "other"), str(out)],
             "summary": {"as stored": {"member_2": {"mean": 0.9, "worst_value": 0.8}},
                         "HU +50": {"member_2": {"mean": 0.7, "worst_value": 0.6}}}}
    c = ensemble_size.candidate(out, {"grid64": demo_data, "native": None}, suite)
    manifest = dataio.load_json(out / inference.MANIFEST)
    assert c["k"] == 2 and c["train_cases"] == sorted({len(m["train"]) for m in manifest["members"]})
    assert sorted(r["case_id"] for r in c["rows"]) == sorted(
        cid for m in manifest["members"] for cid in m["test"])
    row = c["rows"][0]
    member = next(m for m in manifest["members"] if row["case_id"] in m["test"])
    case = dataio.load_case(demo_data / row["case_id"])
    forward = inference.compiled_forward(inference.load_model(out / member["file"]))
    mask = inference.predict_volume(forward, case.ct_hu, case.affine)["mask"]
    assert row["dice"] == pytest.approx(metrics.dice(mask, case.mask))
    assert c["dice_mean_both_grids"] == pytest.approx(c["dice"]["grid64"]["mean"])
    assert c["robustness"] == {"column": "member_2", "shifts": 2, "mean_of_means": pytest.approx(0.8),
                               "mean_of_worst": pytest.approx(0.7), "lowest_worst": 0.6}
    assert ensemble_size.robustness_of(suite, tmp_path / "elsewhere") is None
    with pytest.raises(LungsegInputError, match="same K"):
        ensemble_size.compare([out, out], {"grid64": demo_data, "native": None})
