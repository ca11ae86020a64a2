"""The ensemble exported once to OpenVINO (issue #28): the same members' probabilities as
TensorFlow's runtime, found in the cache only for the very members it was exported from,
and what the command runs on once exported (TensorFlow before, or when asked)."""

import json

import nibabel as nib
import numpy as np
import pytest

from lungseg_utils import dataio
from lungseg_utils.geometry import lps_affine
from lungseg_utils.scan import openvino_ir, runtime, segment
from lungseg_utils.synthetic import make_phantom
from _shared import two_member_ensemble

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def exported(smoke_model_path, tmp_path_factory):
    """A two-member ensemble of the smoke model and its IR in a cache of its own."""
    root = tmp_path_factory.mktemp("openvino")
    folder = two_member_ensemble(root / "ensemble", smoke_model_path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LUNGSEG_CACHE", str(root / "cache"))
        assert openvino_ir.cached_forward(folder) is None       # nothing exported yet
        xml = openvino_ir.export_ir(folder)
    return folder, xml, root / "cache"


def test_the_ir_gives_each_member_s_probability(exported, monkeypatch):
    folder, xml, cache = exported
    monkeypatch.setenv("LUNGSEG_CACHE", str(cache))
    assert xml.exists() and xml.with_suffix(".bin").exists() and xml.is_relative_to(cache)
    x = np.random.default_rng(0).random((2, 64, 64, 64, 1)).astype(np.float32)
    expected = runtime.ensemble_forward(folder, policy="float32")(x)
    assert not np.allclose(expected[0], expected[1])
    got = openvino_ir.cached_forward(folder, policy="float32")(x)
    assert got.shape == expected.shape == (2, 2, 64, 64, 64, 1) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(openvino_ir.cached_forward(folder, policy="float32")(x[:1]),
                               expected[:, :1], rtol=1e-4, atol=1e-5)
    error = np.abs(openvino_ir.cached_forward(folder, policy="mixed_bfloat16")(x) - expected)
    assert error.mean() < 0.005 and error.max() < 0.1, (error.mean(), error.max())


def test_the_ir_is_found_only_for_the_members_it_was_made_from(exported, monkeypatch, tmp_path):
    folder, xml, cache = exported
    monkeypatch.setenv("LUNGSEG_CACHE", str(cache))
    assert openvino_ir.ir_path(folder) == xml
    assert openvino_ir.ir_path(folder / "fold_0.keras") != xml       # one member alone
    other = tmp_path / "other"
    other.mkdir()
    manifest = dataio.load_json(folder / "manifest.json")
    for member in manifest["members"][::-1]:                           # the same two, swapped
        (other / member["file"]).write_bytes((folder / member["file"]).read_bytes())
    manifest["members"] = manifest["members"][::-1]
    (other / "manifest.json").write_text(json.dumps(manifest))
    assert openvino_ir.ir_path(other) != xml
    assert openvino_ir.cached_forward(other) is None
    monkeypatch.setenv("LUNGSEG_CACHE", str(tmp_path / "empty"))
    assert openvino_ir.cached_forward(folder) is None


def test_the_command_runs_on_openvino_once_exported_and_on_tensorflow_when_asked(
        exported, monkeypatch, tmp_path, capsys):
    folder, _, cache = exported
    monkeypatch.setenv("LUNGSEG_CACHE", str(cache))
    shape, spacing = (40, 40, 30), (8.0, 8.0, 10.0)
    ct, _, affine = make_phantom(shape=shape, spacing_mm=spacing, seed=3,
                                 affine=lps_affine(shape, spacing))
    for name in ("a", "b"):
        (tmp_path / "in" / name).mkdir(parents=True)
        nib.save(nib.Nifti1Image(np.round(ct).astype(np.int16), affine),
                 str(tmp_path / "in" / name / "ct.nii.gz"))
    masks = {}
    for engine in ("auto", "tensorflow"):
        out = tmp_path / engine
        assert segment.main(["--model", str(folder), "--runtime", engine, "--input",
                             str(tmp_path / "in" / "a"), "--output_mask", str(out / "m.nii.gz"),
                             "--output_json", str(out / "s.json")]) == 0
        summary = dataio.load_json(out / "s.json")
        assert summary["model"]["runtime"] == {"auto": "openvino"}.get(engine, engine)
        masks[engine] = nib.load(out / "m.nii.gz")
        assert masks[engine].shape == shape and np.allclose(masks[engine].affine, affine)
    # bfloat16 in both runtimes, rounded apart: the smoke network's steep voxels may flip
    differ = masks["auto"].get_fdata() != masks["tensorflow"].get_fdata()
    assert differ.mean() < 0.002, differ.sum()
    assert segment.main(["--model", str(folder), "--input", str(tmp_path / "in"),
                         "--output_dir", str(tmp_path / "many")]) == 0      # folder mode
    assert dataio.load_json(tmp_path / "many" / "b" / "lung_summary.json")["model"][
        "runtime"] == "openvino"
    capsys.readouterr()
    monkeypatch.setenv("LUNGSEG_CACHE", str(tmp_path / "empty"))
    assert segment.main(["--model", str(folder), "--runtime", "openvino", "--input",
                         str(tmp_path / "in" / "a"), "--output_mask",
                         str(tmp_path / "x" / "m.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "lungseg export-ir" in err and str(folder) in err
    assert not (tmp_path / "x" / "m.nii.gz").exists()
