"""lungseg_utils.ensemble: the K folds, cross-validation scoring every case once with the
member that never saw it, the manifest an ensemble loads from, publishing, promoting a run,
and the command line (lungseg_utils.runs.cv). The cross-validation is the session's shared
``smoke_cv`` (tests/conftest.py: two one-epoch members on four phantoms)."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from lungseg_utils import config, ensemble, experiments, inference, dataio, metrics, train
from lungseg_utils.errors import LungsegInputError
from lungseg_utils.runs import cv, training
from lungseg_utils.study import reference, seeds

IDS = ["synth_000", "synth_001", "synth_002", "synth_003"]


def test_fold_splits_cover_every_case_once():
    ids = [f"p{i}" for i in range(7)]
    for checkpoint in ("best", "last"):
        splits = ensemble.fold_splits(ids, 3, seed=1, checkpoint=checkpoint)
        assert sorted(c for s in splits for c in s["test"]) == ids        # each case once
        for s in splits:
            assert not set(s["train"]) & set(s["test"])                  # never seen
            assert sorted(s["train"] + s["val"] + s["test"]) == ids or checkpoint == "last"
            if checkpoint == "last":
                assert s["val"] == s["test"]                              # logged, not chosen
                assert sorted(s["train"] + s["test"]) == ids
            else:
                assert len(s["val"]) == 1 and not set(s["val"]) & set(s["test"])
    assert ensemble.fold_splits(ids, 3, seed=1) == ensemble.fold_splits(ids, 3, seed=1)
    assert ensemble.fold_splits(ids, 3, seed=1) != ensemble.fold_splits(ids, 3, seed=2)
    for k in (1, len(ids) + 1):
        with pytest.raises(LungsegInputError, match=f"k={k}"):
            ensemble.fold_splits(ids, k)
    leave_one_out = ensemble.fold_splits(ids, len(ids))          # K = n: one case a fold
    assert sorted(c for s in leave_one_out for c in s["test"]) == ids
    assert all(len(s["test"]) == 1 for s in leave_one_out)


def test_cross_validation_scores_every_case_once(smoke_cv, demo_data):
    out, published, result = smoke_cv
    assert dataio.load_json(out / "cross_validation.json") == result
    assert dataio.load_json(published / "cross_validation.json") == result
    assert sorted(r["case_id"] for r in result["cases"]) == IDS
    assert {r["fold"] for r in result["cases"]} == {0, 1} and result["folds"] == 2
    assert result["settings"]["base_filters"] == 2 and result["profile"] == "smoke"
    for r in result["cases"]:            # scored by the one member that never saw the case
        split = dataio.load_json(out / f"fold_{r['fold']}" / r["run"] / "split.json")
        assert r["case_id"] in split["test"]
        assert r["case_id"] not in split["train"] + split["val"]
    dice = [r["dice"] for r in result["cases"]]
    assert result["summary"]["dice"]["mean"] == pytest.approx(np.mean(dice))
    # one row recomputed with its member
    r = result["cases"][0]
    fwd = inference.compiled_forward(inference.load_model(out / f"fold_{r['fold']}" / r["run"]))
    case = dataio.load_case(demo_data / r["case_id"])
    mask = inference.predict_volume(fwd, case.ct_hu, case.affine)["mask"]
    assert r["dice"] == pytest.approx(metrics.dice(mask, case.mask))


def test_manifest_makes_the_folds_an_ensemble(smoke_cv):
    out, published, _ = smoke_cv
    manifest = dataio.load_json(out / inference.MANIFEST)
    assert manifest["kind"] == "ensemble" and manifest["folds"] == 2
    assert sorted(c for m in manifest["members"] for c in m["test"]) == IDS
    for m in manifest["members"]:
        assert dataio.file_sha256(out / m["file"]) == m["sha256"]
        assert not set(m["train"]) & set(m["test"])
    models = [inference.load_model(out / m["file"]) for m in manifest["members"]]
    ens = inference.load_model(out)
    assert isinstance(ens, inference.Ensemble) and len(ens.members) == 2
    x = np.random.default_rng(0).random((1, 64, 64, 64, 1)).astype(np.float32)
    np.testing.assert_allclose(inference.compiled_forward(ens)(x),
                               np.mean([inference.compiled_forward(m)(x) for m in models], 0),
                               rtol=1e-5, atol=1e-6)
    # the published copy: one model file a member, same hashes, loads the same way
    pub = dataio.load_json(published / inference.MANIFEST)
    assert [m["file"] for m in pub["members"]] == ["fold_0/best_model.keras",
                                                    "fold_1/best_model.keras"]
    assert [m["sha256"] for m in pub["members"]] == [m["sha256"] for m in manifest["members"]]
    assert all(dataio.file_sha256(published / m["file"]) == m["sha256"] for m in pub["members"])
    assert not list(published.glob("fold_*/final_model.keras"))
    assert len(inference.load_model(published).members) == 2
    # and the evaluation pairs every case with its own fold's member
    jobs = experiments.out_of_fold_jobs(published)
    assert sorted(j[0] for j in jobs) == IDS and all("CV fold" in j[1] for j in jobs)
    with pytest.raises(LungsegInputError, match="holds an ensemble"):
        reference.publish(out, published)


def test_command_line(smoke_cv, demo_data, tmp_path, monkeypatch, capsys):
    assert cv.main(["--k", "5", "--data_dir", str(demo_data),
                    "--out_dir", str(tmp_path / "cv")]) == 2
    assert "k=5" in capsys.readouterr().err
    assert not (tmp_path / "cv").exists()                  # refused before training
    seen = {}

    def fake(k, data_dir, out_dir, profile, seed, trainer, splits=None):
        seen.update(k=k, data_dir=data_dir, out_dir=out_dir, profile=profile, seed=seed,
                    trainer=trainer, splits=splits)
        return smoke_cv[2]

    monkeypatch.setattr(ensemble, "cross_validate", fake)
    assert cv.main(["--k", "2", "--profile", "smoke", "--data_dir", "d", "--out_dir", "o",
                    "--seed", "3"]) == 0
    assert seen == dict(k=2, data_dir="d", out_dir="o", profile="smoke", seed=3, splits=None,
                        trainer=training.train_run)   # each member a full run of the command
    s = smoke_cv[2]["summary"]["dice"]
    assert capsys.readouterr().out.strip() == (
        f"2-fold cross-validation: out-of-fold Dice {s['mean']:.4f} ± {s['sd']:.4f}, "
        f"worst {s['worst_value']:.4f} ({s['worst_case_id']})")
    with pytest.raises(SystemExit):
        cv.main(["--help"])
    assert "--init_from" in capsys.readouterr().out


# ----------------------------------------------------------------------------- promote
def test_promote_run_refuses_to_overwrite(tmp_path):
    run = tmp_path / "run_1"
    run.mkdir()
    for name in train.RUN_ARTIFACTS:
        (run / name).write_text(name)
    ref = reference.promote_run(run, tmp_path / "ref")
    assert (ref / "best_model.keras").read_text() == "best_model.keras"
    assert dataio.load_json(ref / "provenance.json") == {"promoted_from": "run_1"}
    with pytest.raises(LungsegInputError, match="exists"):
        reference.promote_run(run, ref)
    reference.promote_run(run, ref, overwrite=True)
    lean = reference.promote_run(run, tmp_path / "lean", include_final=False)
    assert (lean / "best_model.keras").exists() and not (lean / "final_model.keras").exists()
    (run / "test_metrics.json").unlink()
    with pytest.raises(LungsegInputError, match="not a finished run"):
        reference.promote_run(run, tmp_path / "other")


def test_promoted_run_is_the_default_model(smoke_run, tmp_path, monkeypatch):
    ref = reference.promote_run(smoke_run, tmp_path / "reference")
    monkeypatch.setattr(config, "REFERENCE_DIR", ref)
    assert inference.resolve_model_path() == ref / "best_model.keras"
    assert inference.load_model().output_shape == (None, 64, 64, 64, 1)
    assert dataio.load_json(ref / "split.json") == dataio.load_json(smoke_run / "split.json")
    jobs = experiments.reference_jobs()
    assert [j[0] for j in jobs] == dataio.load_json(smoke_run / "split.json")["test"]


def test_train_main_writes_the_reference_layout_once(smoke_main, demo_data, tmp_path):
    """Notebook 04's training (the session's ``smoke_main``): the folds' members under cv/,
    the manifest (the ensemble) and member 0's run artifacts at the top; a trained run is not
    trained again, a folder with other files is refused; promoted, it is a reference the
    inference command loads."""
    tiny = dict(profile="smoke", base_filters=2, depth=1)  # conftest.SMOKE
    run, out = smoke_main
    assert out["trained"] and out["run_dir"] == run and out["wall_s"] > 0
    manifest = dataio.load_json(run / inference.MANIFEST)
    assert manifest == out["manifest"] and manifest["folds"] == 2
    assert manifest["fold_seed"] == 42 and {m["seed"] for m in manifest["members"]} == {42}
    assert all(m["file"].startswith("cv/fold_") for m in manifest["members"])
    assert sorted(c for m in manifest["members"] for c in m["test"]) == IDS
    members = ensemble.member_runs(run)
    for name in train.RUN_ARTIFACTS:                       # member 0 at the top, but its
        if name.endswith(".keras"):                        # model, kept once, in cv/
            assert not (run / name).exists(), name
        else:
            assert (run / name).read_bytes() == (members[0] / name).read_bytes(), name
    assert experiments.run_identity(run)["model_sha256"] == dataio.file_sha256(
        run / manifest["members"][0]["file"])
    assert dataio.load_json(run / "cross_validation.json")["folds"] == 2
    jobs = experiments.out_of_fold_jobs(run)
    assert sorted(j[0] for j in jobs) == IDS and all(j[2].is_file() for j in jobs)
    again = ensemble.train_main(run, demo_data, folds=2, **tiny)
    assert not again["trained"] and again["manifest"] == manifest
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(LungsegInputError, match="holds files but no manifest"):
        ensemble.train_main(tmp_path / "junk", demo_data, **tiny)
    ref = tmp_path / "reference"
    run = shutil.copytree(run, tmp_path / "main")               # the shared run stays as it is
    members = ensemble.member_runs(run)
    shutil.copytree(members[0], run / "seeds" / "seed_7" / members[0].name)   # a seed run
    assert reference.promote_main(run, ref) == ref
    assert len(inference.load_model(ref).members) == 2 and not list(ref.rglob("final_model.keras"))
    assert not (ref / "seeds").exists()
    assert dataio.load_json(ref / inference.MANIFEST) == manifest
    with pytest.raises(LungsegInputError, match="holds a reference"):
        reference.promote_main(run, ref)
    with pytest.raises(LungsegInputError, match="not a finished run"):
        reference.promote_main(tmp_path / "junk", ref, overwrite=True)


# ----------------------------------------------------------------------------- seeds
@pytest.fixture(scope="module")
def fine_tuned(smoke_cv, demo_data, tmp_path_factory):
    """``(folder, result)``: a 2-fold cross-validation whose members are fine-tuned from
    ``smoke_cv``'s (``init_from``), on their splits."""
    from conftest import SMOKE

    ft = tmp_path_factory.mktemp("fine_tuned") / "ft"
    return ft, ensemble.cross_validate(k=2, data_dir=demo_data, out_dir=ft,
                                       **cv.fine_tuning(smoke_cv[0], 2), **SMOKE)


@pytest.fixture(scope="module")
def seed_spread(fine_tuned, demo_data):
    """What ``seeds.main`` printed when it retrained member 1 of ``fine_tuned`` with seed 7
    (42 being the member's own) into that folder: one seed run serves the seed spread's
    test and the fine-tuning's."""
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert seeds.main(["--seeds", "42", "7", "--fold", "1", "--from", str(fine_tuned[0]),
                           "--data_dir", str(demo_data)]) == 0
    return printed.getvalue()


def test_seed_spread_retrains_one_member_with_other_seeds(fine_tuned, seed_spread, capsys):
    ens = fine_tuned[0]
    member = dataio.load_json(ens / inference.MANIFEST)["members"][1]
    spread = dataio.load_json(ens / "seed_spread.json")
    assert spread["fold"] == 1 and spread["seeds"] == [7, 42]     # 42: the member itself
    new_run = Path(spread["runs"]["7"])                      # outside the repository: absolute
    assert new_run.parent == ens / "seeds" / "seed_7"
    assert dataio.load_json(new_run / "split.json") == dataio.load_json(
        (ens / member["file"]).parent / "split.json")            # the same cases
    cfg = dataio.load_json(new_run / "train_config.json")["settings"]
    old = dataio.load_json((ens / member["file"]).parent / "train_config.json")["settings"]
    assert cfg["seed"] == 7 and {k: v for k, v in cfg.items() if k != "seed"} == {
        k: v for k, v in old.items() if k != "seed"}              # only the seed differs
    assert {(r["case_id"], r["seed"]) for r in spread["rows"] if r["grid"] == "grid64"} == {
        (c, s) for c in member["test"] for s in (7, 42)}
    for row in spread["summary"]:
        d = [r["dice"] for r in spread["rows"]
             if (r["case_id"], r["grid"]) == (row["case_id"], row["grid"])]
        assert row["range"] == pytest.approx(max(d) - min(d)) and 0 <= row["min"] <= row["max"] <= 1
    assert "over seeds [7, 42]" in seed_spread
    with pytest.raises(SystemExit):                      # --from is required
        seeds.main(["--seeds", "7"])
    assert "--from" in capsys.readouterr().err


def test_cross_validation_can_fine_tune_another_ensembles_members(smoke_cv, demo_data, tmp_path,
                                                                  fine_tuned, seed_spread):
    from conftest import SMOKE

    src, (ft, result) = smoke_cv[0], fine_tuned
    assert dataio.load_json(ft / "cross_validation.json") == result      # what it returns
    for i, (old, new) in enumerate(zip(ensemble.member_runs(src), ensemble.member_runs(ft))):
        assert dataio.load_json(new / "split.json") == dataio.load_json(old / "split.json")
        init = dataio.load_json(new / "train_config.json")["init_weights"]
        assert init["sha256"] == dataio.file_sha256(old / "best_model.keras")
    assert sorted(r["case_id"] for r in result["cases"]) == IDS      # still out of fold
    with pytest.raises(LungsegInputError, match="not k=3"):
        cv.fine_tuning(src, 3)
    # a fine-tuned member's seed runs repeat the fine-tuning: the same starting weights
    run_7 = Path(dataio.load_json(ft / "seed_spread.json")["runs"]["7"])   # member 1's seed 7
    parent = dataio.load_json(ensemble.member_runs(ft)[1] / "train_config.json")
    assert dataio.load_json(run_7 / "train_config.json")["init_weights"]["sha256"] == \
        parent["init_weights"]["sha256"]
    (ensemble.member_runs(src)[0] / "best_model.keras").rename(tmp_path / "moved.keras")
    try:
        with pytest.raises(LungsegInputError, match="which is missing"):
            seeds.train_seeds(ft, [8], fold=0, data_dir=demo_data)
    finally:
        (tmp_path / "moved.keras").rename(ensemble.member_runs(src)[0] / "best_model.keras")
