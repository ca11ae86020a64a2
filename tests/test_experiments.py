"""lungseg_utils.experiments: which model scores which case, the method comparison, and the
evaluation and TTA pipelines of notebooks 05 and 06 end to end (with the session's shared
smoke model). Cross-validation and promoting runs: tests/test_ensemble.py.

The result files' schema (lungseg_utils.report.schema) is tested on fixed values in
tests/test_report.py; here the pipeline that builds them runs on real models."""

import json

import numpy as np
import pytest

from lungseg_utils import config, experiments, inference, dataio, metrics
from lungseg_utils.errors import LungsegInputError
from lungseg_utils.report import schema
from lungseg_utils.geometry import lps_affine, spacing_from_affine
from lungseg_utils.dataio import Case, load_json
from lungseg_utils.synthetic import make_phantom


def _write_run(folder, test_ids, model=True):
    folder.mkdir(parents=True)
    (folder / "split.json").write_text(json.dumps({"train": ["a"], "val": ["b"], "test": test_ids}))
    if model:
        (folder / "best_model.keras").write_bytes(b"x")


def test_out_of_fold_jobs_follow_the_manifest(tmp_path):
    ref = tmp_path / "reference"
    _write_run(ref, ["p3", "p1"])
    jobs = experiments.out_of_fold_jobs(ref)
    assert [(j[0], j[1]) for j in jobs] == [("p1", "reference"), ("p3", "reference")]
    assert experiments.reference_jobs(ref) == jobs
    _write_run(ref / "cv" / "fold_9", ["p9"])      # a folder the manifest does not list: ignored
    members = [{"file": "cv/a/best_model.keras", "fold": 0, "test": ["p2", "p4"]},
               {"file": "cv/b/best_model.keras", "fold": 1, "test": ["p1", "p3"]}]
    dataio.save_json({"kind": "ensemble", "members": members}, ref / "manifest.json")
    jobs = experiments.out_of_fold_jobs(ref)
    assert [j[0] for j in jobs] == ["p1", "p2", "p3", "p4"]
    assert dict((j[0], j[1]) for j in jobs)["p2"] == "CV fold 0"
    assert jobs[0][2] == ref / "cv" / "b" / "best_model.keras"
    assert len(experiments.out_of_fold_jobs(ref, max_cases=2)) == 2
    assert [j[1] for j in experiments.reference_jobs(ref)] == ["reference"] * 2   # not the folds


def test_run_identity_and_its_check(tmp_path):
    run = tmp_path / "run"
    _write_run(run, ["p1"])
    ident = experiments.run_identity(run)
    assert ident["model_sha256"] == dataio.file_sha256(run / "best_model.keras")
    assert ident["manifest_sha256"] is None and ident["run"].endswith("run")
    experiments.check_identity({"run": ident}, run, "evaluation.json", "05")
    experiments.check_identity({}, run, "evaluation.json", "05")  # older files: no identity
    (run / "best_model.keras").write_bytes(b"another model")
    with pytest.raises(LungsegInputError, match="describes the model of .*re-run notebook 05"):
        experiments.check_identity({"run": ident}, run, "evaluation.json", "05")


def test_record_job_writes_the_wall_time_and_the_cpu(tmp_path):
    import time

    from lungseg_utils.report.build import record_job

    path = record_job(tmp_path, time.time() - 90)
    job = dataio.load_json(path)
    assert path == tmp_path / "job.json" and 90 <= job["wall_s"] < 150
    assert job["cpu"]["logical_cpus"] >= 1 and isinstance(job["cpu"]["avx512"], bool)
    assert job["profile"] == config.profile_name()


def test_compare_methods_scores_every_method_on_the_input_grid():
    ct, mask, affine = make_phantom(shape=(70, 60, 40), spacing_mm=(5.0, 5.0, 8.0), seed=2)
    case = Case("phantom", ct, mask, affine, spacing_from_affine(affine), None)

    def perfect_at_64(batch):  # a "network" that thresholds air: lungs and outside air
        return (batch < 0.12).astype(np.float32)

    row, masks, pred = experiments.compare_methods(perfect_at_64, case, with_ceiling=True)
    assert set(masks) == {"unet", "unet_raw", "unet_post", "baseline", "ceiling"}
    assert set(row) == {"case_id", *masks} and row["case_id"] == "phantom"
    for name, m in masks.items():
        assert m.shape == mask.shape and m.dtype == np.uint8
        assert row[name] == metrics.evaluate_masks(m, mask, case.spacing_mm)
    np.testing.assert_array_equal(masks["unet"], pred["mask"])
    np.testing.assert_array_equal(masks["unet_raw"], pred["mask_network"])
    assert row["ceiling"]["dice"] > 0.95 and row["baseline"]["dice"] > 0.9
    # the air-threshold "network" also marks the air around the body: post-processing can't
    # rescue that, and the metrics must say so
    assert row["unet"]["dice"] < row["baseline"]["dice"]
    assert "ceiling" not in experiments.compare_methods(perfect_at_64, case)[1]
    with pytest.raises(LungsegInputError, match="lung mask"):
        experiments.compare_methods(perfect_at_64, Case("x", ct, None, affine, (5, 5, 8), None))


def test_summarise_methods():
    rows = [{"case_id": f"c{i}", "a": {"dice": d, "iou": d, "hd95_mm": h, "assd_mm": 0.5,
                                       "volume_error_pct": -1.0}, "b": {"dice": 1.0, "hd95_mm": 0.0}}
            for i, (d, h) in enumerate(((0.9, 2.0), (0.8, 7.0)))]
    out = experiments.summarise_methods(rows, ["a"])
    assert set(out) == {"a"} and set(out["a"]) == set(metrics.METRICS)
    assert out["a"]["dice"]["worst_case_id"] == "c1" and out["a"]["hd95_mm"]["max"] == 7.0
    assert out["a"]["dice"]["mean"] == pytest.approx(0.85)
    both = experiments.summarise_methods(rows, ["a", "b"], keys=("dice",))
    assert set(both["b"]) == {"dice"} and both["b"]["dice"]["sd"] == 0.0


# ----------------------------------------------------------------------------- pipelines
@pytest.fixture(scope="module")
def native_copies(tmp_path_factory):
    """Phantoms under two of the demo set's case ids, on a finer, non-model grid."""
    folder = tmp_path_factory.mktemp("native")
    shape, spacing = (72, 64, 36), (4.5, 4.5, 8.0)
    for seed, cid in enumerate(("synth_002", "synth_003")):
        ct, mask, affine = make_phantom(shape=shape, spacing_mm=spacing, seed=seed,
                                        affine=lps_affine(shape, spacing, (4.0, -6.0, 3.0)))
        dataio.save_nifti(np.round(ct).astype(np.int16), affine, folder / cid / dataio.CT_NAME)
        dataio.save_nifti(mask, affine, folder / cid / dataio.MASK_NAME)
    return folder


def test_evaluation_pipeline_end_to_end(smoke_model_path, demo_data, native_copies):
    jobs = [(cid, "reference", smoke_model_path) for cid in ("synth_002", "synth_003")]
    forwards = {}
    blocks = experiments.evaluate_jobs(jobs, {"grid64": demo_data, "native": native_copies},
                                       forwards)
    assert list(forwards) == [smoke_model_path]                   # loaded once, reused
    assert set(blocks) == set(experiments.GRIDS)
    for grid, block in blocks.items():
        assert block["methods"] == list(experiments.GRID_METHODS[grid])
        assert [r["case_id"] for r in block["cases"]] == ["synth_002", "synth_003"]
        assert all(r["model"] == "reference" for r in block["cases"])
        assert block["summary"]["unet"]["dice"]["mean"] == pytest.approx(
            np.mean([r["unet"]["dice"] for r in block["cases"]]))
    # the row is the method comparison of that case with that model
    case = dataio.load_case(native_copies / "synth_003")
    row = experiments.compare_methods(forwards[smoke_model_path], case, with_ceiling=True)[0]
    assert blocks["native"]["cases"][1]["baseline"] == row["baseline"]
    assert blocks["native"]["cases"][1]["unet"] == row["unet"]
    result = schema.check_evaluation(experiments.evaluation_result(smoke_model_path, blocks))
    assert result["test_cases"] == ["synth_002", "synth_003"] and "cross_validation" not in result
    only64 = experiments.evaluate_jobs(jobs[:1], {"grid64": demo_data, "native": None}, forwards)
    assert only64["native"] == {"methods": list(experiments.GRID_METHODS["native"]),
                                "cases": [], "summary": {}}


def test_tta_pipeline_end_to_end(smoke_model_path, smoke_forward, demo_data, native_copies):
    jobs = [(cid, "reference", smoke_model_path) for cid in ("synth_002", "synth_003")]
    rows = experiments.tta_rows(jobs, {"grid64": demo_data, "native": native_copies})
    assert [(r["case_id"], r["grid"]) for r in rows] == [
        ("synth_002", "grid64"), ("synth_002", "native"), ("synth_003", "grid64"),
        ("synth_003", "native")]
    assert all(set(r) == set(experiments.TTA_ROW_KEYS) for r in rows)
    case = dataio.load_case(demo_data / "synth_003")
    tta_mask = inference.predict_volume(smoke_forward, case.ct_hu, case.affine, tta=True)["mask"]
    assert rows[2]["dice_tta"] == pytest.approx(metrics.dice(tta_mask, case.mask))
    times = experiments.time_inference(smoke_forward, np.zeros((64, 64, 64), np.float32), repeats=1)
    assert set(times) == {"single", "tta"} and 0 < times["single"] and 0 < times["tta"]
    result = schema.check_tta(experiments.tta_result(rows, times, 0.75, "synth_003"))
    gain = result["dice_gain"]
    singles = [r["dice_single"] for r in rows if r["grid"] == "grid64"]
    ttas = [r["dice_tta"] for r in rows if r["grid"] == "grid64"]
    assert gain["mean_diff"] == pytest.approx(np.mean(np.subtract(ttas, singles)))
    assert gain["lo"] <= gain["mean_diff"] <= gain["hi"] and gain["ci"] == 0.95
    assert experiments.tta_gains(rows[:2]) == {}                 # one case a grid: no interval


def test_save_result_writes_into_the_run_and_never_into_the_reference_under_smoke(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "FIGURES_DIR", tmp_path / "figures")
    monkeypatch.setattr(config, "REFERENCE_DIR", tmp_path / "reference")
    monkeypatch.setenv("LUNGSEG_PROFILE", "smoke")
    path = experiments.save_result({"a": 1}, "tta.json", tmp_path / "reference")
    assert path == tmp_path / "figures" / "tta.json" and load_json(path) == {"a": 1}
    path = experiments.save_result({"a": 3}, "tta.json", tmp_path / "run")  # a smoke run's own
    assert path == tmp_path / "run" / "tta.json" and load_json(path) == {"a": 3}
    monkeypatch.setenv("LUNGSEG_RUN", str(tmp_path / "active"))
    assert experiments.save_result({"a": 4}, "x.json") == tmp_path / "active" / "x.json"
    monkeypatch.setenv("LUNGSEG_PROFILE", "quick")
    path = experiments.save_result({"a": 2}, "tta.json", tmp_path / "reference")
    assert path == tmp_path / "reference" / "tta.json" and load_json(path) == {"a": 2}


def test_jobs_are_out_of_fold_only_when_no_model_saw_its_case(smoke_cv):
    out = smoke_cv[0]
    jobs = experiments.out_of_fold_jobs(out)
    assert experiments.jobs_are_out_of_fold(out, jobs)
    models = [j[2] for j in jobs]
    swapped = [(cid, src, models[-1 - i]) for i, (cid, src, _) in enumerate(jobs)]
    assert not experiments.jobs_are_out_of_fold(out, swapped)     # each member saw the other's
    assert not experiments.jobs_are_out_of_fold(out, [(jobs[0][0], "x", out / "elsewhere.keras")])
    with pytest.raises(LungsegInputError, match="scoring"):
        experiments.evaluation_result(out, {"grid64": {"cases": []}}, scoring="all")
