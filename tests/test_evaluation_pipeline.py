"""Helpers shared by notebooks 05 and 06: out-of-fold pairing, boundary band, ROC AUC,
method comparison, promoting a run, cross-validation."""

import json

import numpy as np
import pytest

from lungseg_utils import evaluate, train
from lungseg_utils.errors import LungsegInputError
from lungseg_utils.io import Case, load_json, spacing_from_affine
from lungseg_utils.synthetic import make_phantom, write_demo_dataset


def test_roc_auc_known_values():
    assert evaluate.roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert evaluate.roc_auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert evaluate.roc_auc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    # one of four positive-negative pairs misordered
    assert evaluate.roc_auc([0.1, 0.6, 0.5, 0.9], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert np.isnan(evaluate.roc_auc([0.1, 0.2], [1, 1]))


def test_boundary_band_width_in_mm():
    m = np.zeros((40, 40, 40), bool)
    m[10:30, 10:30, 10:30] = True
    band = evaluate.boundary_band(m, (1.0, 1.0, 2.0), 4.0)
    assert band[20, 20, 10] and band[20, 20, 8] and not band[20, 20, 6]   # 2 mm slices
    assert band[10, 20, 20] and band[13, 20, 20] and not band[15, 20, 20]  # 1 mm voxels
    assert not evaluate.boundary_band(np.zeros((5, 5, 5)), (1, 1, 1), 3.0).any()


def _write_run(folder, test_ids, model=True):
    folder.mkdir(parents=True)
    (folder / "split.json").write_text(json.dumps({"train": ["a"], "val": ["b"], "test": test_ids}))
    if model:
        (folder / "best_model.keras").write_bytes(b"x")


def test_out_of_fold_jobs_prefers_cv_folds(tmp_path):
    ref = tmp_path / "reference"
    _write_run(ref, ["p3", "p1"])
    jobs = evaluate.out_of_fold_jobs(ref)
    assert [(j[0], j[1]) for j in jobs] == [("p1", "reference"), ("p3", "reference")]
    _write_run(ref / "cv" / "fold_0", ["p2", "p4"])
    _write_run(ref / "cv" / "fold_1", ["p1", "p3"])
    _write_run(ref / "cv" / "fold_2", ["p9"], model=False)  # incomplete fold: ignored
    jobs = evaluate.out_of_fold_jobs(ref)
    assert [j[0] for j in jobs] == ["p1", "p2", "p3", "p4"]
    assert dict((j[0], j[1]) for j in jobs)["p2"] == "CV fold 0"
    assert jobs[0][2] == ref / "cv" / "fold_1" / "best_model.keras"
    assert len(evaluate.out_of_fold_jobs(ref, max_cases=2)) == 2


def test_compare_methods_scores_every_method_on_the_input_grid():
    ct, mask, affine = make_phantom(shape=(70, 60, 40), spacing_mm=(5.0, 5.0, 8.0), seed=2)
    case = Case("phantom", ct, mask, affine, spacing_from_affine(affine), None)

    def perfect_at_64(batch):  # a "network" that thresholds air: lungs and outside air
        return (batch < 0.12).astype(np.float32)

    row, masks, pred = evaluate.compare_methods(perfect_at_64, case, with_ceiling=True)
    assert set(masks) == {"unet", "unet_raw", "unet_post", "baseline", "ceiling"}
    for m in masks.values():
        assert m.shape == mask.shape and m.dtype == np.uint8
    assert row["ceiling"]["dice"] > 0.95 and row["baseline"]["dice"] > 0.9
    # the air-threshold "network" also marks the air around the body: post-processing can't
    # rescue that, and the metrics must say so
    assert row["unet"]["dice"] < row["baseline"]["dice"]
    with pytest.raises(LungsegInputError, match="lung mask"):
        evaluate.compare_methods(perfect_at_64, Case("x", ct, None, affine, (5, 5, 8), None))


def test_summarise_methods_shape():
    rows = [{"case_id": f"c{i}", "a": {"dice": d, "iou": d, "hd95_mm": 1.0, "assd_mm": 0.5,
                                       "volume_error_pct": -1.0}} for i, d in enumerate((0.9, 0.8))]
    out = evaluate.summarise_methods(rows, ["a"])
    assert out["a"]["dice"]["worst_case_id"] == "c1"
    assert out["a"]["dice"]["mean"] == pytest.approx(0.85)


def test_promote_run_refuses_to_overwrite(tmp_path):
    run = tmp_path / "run_1"
    run.mkdir()
    for name in train.RUN_ARTIFACTS:
        (run / name).write_text(name)
    ref = train.promote_run(run, tmp_path / "ref")
    assert (ref / "best_model.keras").read_text() == "best_model.keras"
    assert load_json(ref / "provenance.json") == {"promoted_from": "run_1"}
    with pytest.raises(LungsegInputError, match="exists"):
        train.promote_run(run, ref)
    train.promote_run(run, ref, overwrite=True)
    (run / "test_metrics.json").unlink()
    with pytest.raises(LungsegInputError, match="not a finished run"):
        train.promote_run(run, tmp_path / "other")


@pytest.mark.slow
def test_cross_validation_scores_every_case_once(tmp_path):
    data = write_demo_dataset(tmp_path / "data", n_cases=4)
    result = train.cross_validate(k=2, data_dir=data, out_dir=tmp_path / "cv", profile="smoke",
                                  publish_dir=tmp_path / "published" / "cv", base_filters=2)
    ids = sorted(r["case_id"] for r in result["cases"])
    assert ids == ["synth_000", "synth_001", "synth_002", "synth_003"]
    assert {r["fold"] for r in result["cases"]} == {0, 1}
    assert 0.0 <= result["summary"]["dice"]["mean"] <= 1.0
    assert (tmp_path / "published" / "cv" / "cross_validation.json").exists()
    jobs = evaluate.out_of_fold_jobs(tmp_path / "published")
    assert sorted(j[0] for j in jobs) == ids and all("CV" in j[1] for j in jobs)
    with pytest.raises(LungsegInputError, match="k="):
        train.cross_validate(k=5, data_dir=data)
