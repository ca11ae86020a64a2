"""lungseg_utils.inference on any scan: shape and affine kept, TTA, refinement, ensembles,
the command line and its errors. The model is the session's shared smoke run
(tests/conftest.py)."""

import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from lungseg_utils import inference, dataio
from lungseg_utils.scan import segment
from lungseg_utils.errors import LungsegInputError
from lungseg_utils.geometry import lps_affine
from lungseg_utils.study.robustness import reorient
from lungseg_utils.synthetic import make_phantom


def _scan(folder, codes="LPS", shape=(90, 80, 50), spacing=(4.0, 4.0, 6.0)):
    ct, mask, affine = make_phantom(shape=shape, spacing_mm=spacing, seed=1,
                                    affine=lps_affine(shape, spacing, (5.0, -3.0, 10.0)))
    ct, aff = reorient(ct, affine, codes)
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(ct.astype(np.int16), aff), str(folder / "ct.nii.gz"))
    return aff, ct.shape


def test_tta_undoes_each_flip():
    x = np.random.default_rng(0).random((64, 64, 64)).astype(np.float32)
    # an equivariant "network" (voxel-wise): TTA changes nothing and has zero spread
    prob, std = inference.predict_prob64(lambda b: b ** 2, x, tta=True)
    np.testing.assert_allclose(prob, x ** 2, rtol=1e-6)
    assert std.max() < 1e-6
    # a network that is not flip-equivariant (a ramp along axis 0): TTA symmetrises it
    ramp = np.linspace(0, 1, 64, dtype=np.float32)[:, None, None, None]
    prob, std = inference.predict_prob64(lambda b: np.broadcast_to(ramp, b.shape), x, tta=True)
    np.testing.assert_allclose(prob, 0.5, atol=1e-6)
    assert std.max() > 0.4


@pytest.mark.parametrize("codes", ["LPS", "RAS", "SAL"])
def test_cli_writes_input_shape_and_affine(tmp_path, smoke_model_path, codes):
    aff, shape = _scan(tmp_path / "p1", codes)
    out, prob = tmp_path / "out" / "mask.nii.gz", tmp_path / "out" / "prob.nii.gz"
    rc = segment.main(["--model", str(smoke_model_path), "--input", str(tmp_path / "p1"),
                         "--output_mask", str(out), "--output_prob", str(prob), "--tta",
                         "--no_refine"])
    assert rc == 0
    m, p = nib.load(str(out)), nib.load(str(prob))
    assert m.shape == shape and p.shape == shape
    np.testing.assert_allclose(m.affine, aff, atol=1e-5)
    np.testing.assert_allclose(p.affine, aff, atol=1e-5)
    assert m.get_data_dtype() == np.uint8 and p.get_data_dtype() == np.float32
    pv = np.asanyarray(p.dataobj)
    assert 0.0 <= pv.min() and pv.max() <= 1.0
    np.testing.assert_array_equal(np.asanyarray(m.dataobj), (pv >= 0.5).astype(np.uint8))


def test_cli_refuses_to_overwrite_and_reports_bad_input(tmp_path, smoke_model_path, capsys):
    _scan(tmp_path / "p1")
    out = tmp_path / "mask.nii.gz"
    args = ["--model", str(smoke_model_path), "--input", str(tmp_path / "p1"), "--output_mask", str(out)]
    assert segment.main(args) == 0
    capsys.readouterr()
    assert segment.main(args) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert segment.main(args + ["--overwrite"]) == 0
    bad = tmp_path / "bad.nii.gz"
    bad.write_text("not an image")
    assert segment.main(["--model", str(smoke_model_path), "--input", str(bad),
                           "--output_mask", str(tmp_path / "x.nii.gz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "bad.nii.gz" in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert segment.main(["--model", str(tmp_path / "none.keras"), "--input", str(tmp_path / "p1"),
                           "--output_mask", str(tmp_path / "y.nii.gz")]) == 2
    assert "model file is missing" in capsys.readouterr().err
    assert segment.main(["--model", str(smoke_model_path), "--input", str(tmp_path / "p1"),
                           "--output_mask", str(tmp_path / "z.nii.gz"), "--thr", "1.0"]) == 2
    assert "--thr 1.0" in capsys.readouterr().err
    assert segment.main(["--model", str(smoke_model_path), "--input", str(tmp_path / "p1")]) == 2
    assert "needs --output_mask" in capsys.readouterr().err


def test_folder_mode_keeps_going_after_a_bad_case(tmp_path, smoke_model_path, capsys):
    patients = tmp_path / "patients"
    aff, shape = _scan(patients / "patient_a", "RAS", shape=(40, 40, 30), spacing=(8, 8, 10))
    (patients / "patient_b").mkdir()
    (patients / "patient_b" / "ct.nii.gz").write_bytes(b"\x1f\x8b\x08broken")
    _scan(patients / "patient_c", shape=(64, 64, 64), spacing=(5, 5, 5))
    rc = segment.main(["--model", str(smoke_model_path), "--input", str(patients),
                         "--output_dir", str(tmp_path / "preds")])
    assert rc == 1
    assert "patient_b" in capsys.readouterr().err
    a = nib.load(str(tmp_path / "preds" / "patient_a" / "lung_pred.nii.gz"))
    assert a.shape == shape and np.allclose(a.affine, aff)
    assert (tmp_path / "preds" / "patient_c" / "lung_prob.nii.gz").exists()
    assert not (tmp_path / "preds" / "patient_b").exists()
    # one summary per scan and a table over the scans that worked
    import csv

    rows = list(csv.DictReader(open(tmp_path / "preds" / segment.SUMMARY_CSV)))
    assert [r["case"] for r in rows] == ["patient_a", "patient_c"]
    assert set(rows[0]) == set(segment.CSV_COLUMNS) and rows[0]["flag"] in ("ok", "check")
    summary = json.loads((tmp_path / "preds" / "patient_a" / "lung_summary.json").read_text())
    assert summary["input"]["orientation"] == "RAS" and summary["model"]["members"] == 1
    assert float(rows[0]["lung_volume_ml"]) == summary["lung_volume_ml"]


def test_help_documents_every_option():
    out = subprocess.run([sys.executable, "-m", "lungseg_utils.inference", "--help"],
                         capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--model", "--input", "--output_mask", "--output_prob", "--output_dir", "--thr",
                 "--tta", "--postprocess", "--no_refine", "--overwrite"):
        assert flag in out.stdout


def test_refine_boundary_redraws_only_near_the_boundary():
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[5:15, 5:15, 5:15] = 1
    ct = np.full(mask.shape, -900.0, np.float32)      # dark everywhere...
    ct[:, :, 12:] = 50.0                              # ...but soft tissue above z = 12
    prob = np.full(mask.shape, 0.5, np.float32)
    band = np.zeros(mask.shape, bool)
    band[3:17, 3:17, 3:17] = True
    band[7:13, 7:13, 7:13] = False                    # a shell around the boundary
    out = inference.refine_boundary(mask, prob, ct, band)
    assert out[8, 8, 8] == 1                          # interior: kept
    assert out[0, 0, 0] == 0                          # far outside: kept
    assert out[4, 10, 8] == 1                         # band, dark: lung
    assert out[10, 10, 13] == 0                       # band, bright: not lung
    prob[4, 10, 8] = 0.0
    assert inference.refine_boundary(mask, prob, ct, band)[4, 10, 8] == 0  # network said no


def test_refinement_changes_only_the_band_and_keeps_geometry(smoke_forward):
    ct, mask, affine = make_phantom(shape=(100, 90, 50), spacing_mm=(3.5, 3.5, 6.0), seed=3)
    fwd = smoke_forward
    res = inference.predict_volume(fwd, ct, affine)
    assert res["mask"].shape == ct.shape and res["mask_network"].shape == ct.shape
    band = inference.boundary_band64(res["prob64"], res["grid"])
    keep = ~band & res["body"]                      # outside the body the mask is always 0
    np.testing.assert_array_equal(res["mask"][keep], res["mask_network"][keep])
    assert not res["mask"][~res["body"]].any()
    plain = inference.predict_volume(fwd, ct, affine, refine=False)
    np.testing.assert_array_equal(plain["mask"], plain["mask_network"] * plain["body"])


def test_tta_averages_the_eight_flips():
    """A network that is not flip-equivariant: TTA's mean is the mean of the 8 flipped-back
    predictions, its spread their standard deviation."""
    x = np.random.default_rng(1).random((64, 64, 64)).astype(np.float32)
    w = np.random.default_rng(2).random((64, 64, 64)).astype(np.float32)
    net = lambda b: b * w[None, ..., None]  # noqa: E731  (a voxel weight that flips do not move)
    preds = np.stack([np.flip(np.flip(x, f) * w, f) if f else x * w for f in inference.FLIPS])
    prob, std = inference.predict_prob64(net, x, tta=True, batch_size=3)
    np.testing.assert_allclose(prob, preds.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, preds.std(0), rtol=1e-4, atol=1e-6)
    assert len(set(inference.FLIPS)) == 8 and inference.FLIPS[0] == ()
    single, zero = inference.predict_prob64(net, x[..., None])
    np.testing.assert_allclose(single, x * w)
    assert not zero.any()
    with pytest.raises(LungsegInputError, match="callable"):
        inference.predict_prob64("model", x)


def test_model_path_resolution_and_bad_models(smoke_run, tmp_path):
    assert inference.resolve_model_path(smoke_run) == smoke_run / "best_model.keras"
    assert inference.resolve_model_path(smoke_run / "final_model.keras").name == "final_model.keras"
    with pytest.raises(LungsegInputError, match="missing"):
        inference.resolve_model_path(tmp_path)
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(LungsegInputError, match="not a Keras model file"):
        inference.load_model(bad)
    import zipfile

    with zipfile.ZipFile(tmp_path / "empty.keras", "w") as z:   # a zip, but not a model
        z.writestr("readme.txt", "hello")
    with pytest.raises(LungsegInputError, match="could not be loaded as a Keras model"):
        inference.load_model(tmp_path / "empty.keras")
    model = inference.load_model(smoke_run)            # a run folder works as --model
    assert model.output_shape == (None, 64, 64, 64, 1)


def test_ensemble_folder_averages_its_members(smoke_model_path, tmp_path):
    from lungseg_utils import unet

    folder = tmp_path / "ensemble"
    folder.mkdir()
    shutil.copyfile(smoke_model_path, folder / "fold_0.keras")
    unet.build_unet(base_filters=2, depth=1).save(folder / "fold_1.keras")   # untrained
    entries = [{"file": f, "sha256": dataio.file_sha256(folder / f)}
               for f in ("fold_0.keras", "fold_1.keras")]
    (folder / inference.MANIFEST).write_text(json.dumps({"members": entries}))
    ens = inference.load_model(folder)
    assert isinstance(ens, inference.Ensemble) and len(ens.members) == 2
    x = np.random.default_rng(0).random((1, 64, 64, 64, 1)).astype(np.float32)
    singles = [inference.compiled_forward(m)(x) for m in ens.members]
    assert not np.allclose(singles[0], singles[1])
    np.testing.assert_allclose(inference.compiled_forward(ens)(x), np.mean(singles, axis=0),
                               rtol=1e-5, atol=1e-6)
    # members=True: each member's probability, in order; predict_prob64 averages them (with
    # TTA too) to what the averaging forward gives
    stacked = inference.compiled_forward(ens, members=True)
    np.testing.assert_allclose(stacked(x), np.stack(singles), rtol=1e-5, atol=1e-6)
    prob, std, members = inference.predict_prob64(stacked, x[0], tta=True, return_members=True)
    prob_mean, std_mean = inference.predict_prob64(inference.compiled_forward(ens), x[0], tta=True)
    assert members.shape == (2, 64, 64, 64)
    np.testing.assert_allclose(prob, prob_mean, atol=1e-5)
    np.testing.assert_allclose(std, std_mean, atol=1e-5)
    np.testing.assert_allclose(members.mean(axis=0), prob, atol=1e-5)
    assert not np.allclose(members[0], members[1])
    (folder / inference.MANIFEST).write_text(json.dumps({"members": []}))
    with pytest.raises(LungsegInputError, match="no members"):
        inference.load_model(folder)
    # Issue #27: a member swapped for another file is refused, not used under the manifest's hash
    (folder / inference.MANIFEST).write_text(json.dumps({"members": entries}))
    shutil.copyfile(folder / "fold_0.keras", folder / "fold_1.keras")
    with pytest.raises(LungsegInputError, match=r"fold_1\.keras: its SHA-256 differs from"):
        inference.load_model(folder)
    (folder / inference.MANIFEST).write_text(json.dumps({"members": [{"file": "fold_0.keras"}]}))
    with pytest.raises(LungsegInputError, match="records no sha256"):
        inference.load_model(folder)


def test_predict_volume_of_a_case_from_a_path_keeps_the_grid(tmp_path, smoke_forward):
    aff, shape = _scan(tmp_path / "p1", "RAS", shape=(50, 44, 30), spacing=(7.0, 7.0, 9.0))
    case = dataio.load_case(tmp_path / "p1", require_mask=False)
    res = inference.predict_volume(smoke_forward, case.ct_hu, case.affine, postprocess=True)
    assert res["mask"].shape == shape and res["prob"].shape == shape
    assert res["prob64"].shape == (64, 64, 64) and res["mask"].dtype == np.uint8
    np.testing.assert_allclose(res["grid"].source_affine, aff)
