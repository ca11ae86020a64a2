"""Inference on any scan: shape and affine kept, TTA, the command line and its errors."""

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from lungseg_utils import inference
from lungseg_utils.synthetic import lps_affine, make_phantom, reorient


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    from lungseg_utils.model import build_unet

    model = build_unet(base_filters=2)
    path = tmp_path_factory.mktemp("model") / "best_model.keras"
    model.save(path)
    return path


def _scan(folder, codes="LPS", shape=(90, 80, 50), spacing=(4.0, 4.0, 6.0)):
    ct, mask, affine = make_phantom(shape=shape, spacing_mm=spacing, seed=1,
                                    affine=lps_affine(shape, spacing, (5.0, -3.0, 10.0)))
    ct, aff = reorient(ct, affine, codes)
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(ct.astype(np.int16), aff), str(folder / "ct.nii.gz"))
    return aff, ct.shape


def test_flip_table():
    assert len(inference.FLIPS) == 8 and inference.FLIPS[0] == ()
    assert len(set(inference.FLIPS)) == 8


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
def test_cli_writes_input_shape_and_affine(tmp_path, tiny_model_path, codes):
    aff, shape = _scan(tmp_path / "p1", codes)
    out, prob = tmp_path / "out" / "mask.nii.gz", tmp_path / "out" / "prob.nii.gz"
    rc = inference.main(["--model", str(tiny_model_path), "--input", str(tmp_path / "p1"),
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


def test_cli_refuses_to_overwrite_and_reports_bad_input(tmp_path, tiny_model_path, capsys):
    _scan(tmp_path / "p1")
    out = tmp_path / "mask.nii.gz"
    args = ["--model", str(tiny_model_path), "--input", str(tmp_path / "p1"), "--output_mask", str(out)]
    assert inference.main(args) == 0
    capsys.readouterr()
    assert inference.main(args) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert inference.main(args + ["--overwrite"]) == 0
    bad = tmp_path / "bad.nii.gz"
    bad.write_text("not an image")
    assert inference.main(["--model", str(tiny_model_path), "--input", str(bad),
                           "--output_mask", str(tmp_path / "x.nii.gz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "bad.nii.gz" in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert inference.main(["--model", str(tmp_path / "none.keras"), "--input", str(tmp_path / "p1"),
                           "--output_mask", str(tmp_path / "y.nii.gz")]) == 2
    assert "model file is missing" in capsys.readouterr().err


def test_folder_mode_keeps_going_after_a_bad_case(tmp_path, tiny_model_path, capsys):
    patients = tmp_path / "patients"
    aff, shape = _scan(patients / "patient_a", "RAS", shape=(40, 40, 30), spacing=(8, 8, 10))
    (patients / "patient_b").mkdir()
    (patients / "patient_b" / "ct.nii.gz").write_bytes(b"\x1f\x8b\x08broken")
    _scan(patients / "patient_c", shape=(64, 64, 64), spacing=(5, 5, 5))
    rc = inference.main(["--model", str(tiny_model_path), "--input", str(patients),
                         "--output_dir", str(tmp_path / "preds")])
    assert rc == 1
    assert "patient_b" in capsys.readouterr().err
    a = nib.load(str(tmp_path / "preds" / "patient_a" / "lung_pred.nii.gz"))
    assert a.shape == shape and np.allclose(a.affine, aff)
    assert (tmp_path / "preds" / "patient_c" / "lung_prob.nii.gz").exists()
    assert not (tmp_path / "preds" / "patient_b").exists()


def test_help_documents_every_option():
    out = subprocess.run([sys.executable, "-m", "lungseg_utils.inference", "--help"],
                         capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--model", "--input", "--output_mask", "--output_prob", "--output_dir", "--thr",
                 "--tta", "--postprocess", "--overwrite"):
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


def test_refinement_changes_only_the_band_and_keeps_geometry(tiny_model_path):
    ct, mask, affine = make_phantom(shape=(100, 90, 50), spacing_mm=(3.5, 3.5, 6.0), seed=3)
    fwd = inference.compiled_forward(inference.load_model(tiny_model_path))
    res = inference.predict_volume(fwd, ct, affine)
    assert res["mask"].shape == ct.shape and res["mask_network"].shape == ct.shape
    band = inference.boundary_band64(res["prob64"], res["grid"])
    np.testing.assert_array_equal(res["mask"][~band], res["mask_network"][~band])
    plain = inference.predict_volume(fwd, ct, affine, refine=False)
    np.testing.assert_array_equal(plain["mask"], plain["mask_network"])
