"""lungseg_utils.study.robustness: every controlled shift changes the scan (and its reference) the
way it says and keeps them aligned in the world; members are picked out of fold; the suite
scores a case under shifts with the session's shared cross-validation ensemble."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lungseg_utils import anatomy, geometry, inference, dataio, metrics
from lungseg_utils.study import robustness
from lungseg_utils.errors import LungsegInputError
from lungseg_utils.dataio import Case
from lungseg_utils.synthetic import make_phantom


@pytest.fixture(scope="module")
def native_case():
    shape, spacing = (80, 72, 40), (4.5, 4.5, 8.0)
    ct, mask, affine = make_phantom(shape=shape, spacing_mm=spacing, seed=2,
                                    affine=geometry.lps_affine(shape, spacing, (3.0, -5.0, 8.0)))
    return Case("phantom", ct, mask, affine, geometry.spacing_from_affine(affine), None)


def _world_of_mask(mask, affine):
    """World positions (mm) of the mask's voxels, as a sorted array (order-free comparison)."""
    idx = np.argwhere(mask > 0)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    return world[np.lexsort(np.round(world, 3).T)]


@pytest.mark.parametrize("codes", ["RAS", "SLA", "IPR"])
def test_reorient_keeps_every_voxel_at_its_world_point(codes):
    vol = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    aff = geometry.lps_affine(vol.shape, (1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
    out, out_aff = robustness.reorient(vol, aff, codes)
    assert "".join(nib.aff2axcodes(out_aff)) == codes
    i, j, k = 1, 4, 2
    world = aff @ [i, j, k, 1]
    idx = np.round(np.linalg.inv(out_aff) @ world).astype(int)[:3]
    assert out[tuple(idx)] == vol[i, j, k]


def test_every_shift_keeps_scan_and_reference_together(native_case):
    c = native_case
    for name in robustness.SHIFTS:
        ct, mask, aff, centre = robustness.shifted(c, name)
        assert ct.shape == mask.shape and ct.dtype == np.float32, name
        assert (centre is None) != name.startswith("frame "), name
        # the classical method finds the (shifted) lungs on every shifted scan: aligned
        base = anatomy.classical_lung_mask(ct, geometry.spacing_from_affine(aff), axis=geometry.axial_axis(aff))
        assert metrics.dice(base, mask) > 0.9, name
    with pytest.raises(LungsegInputError, match="unknown shift"):
        robustness.shifted(c, "upside down")


def test_shifts_do_what_they_say(native_case):
    c = native_case
    same = robustness.shifted(c, "as stored")
    assert same[0] is c.ct_hu and same[3] is None
    centre = geometry.lung_centre_mm(c.ct_hu, c.affine)
    np.testing.assert_allclose(robustness.shifted(c, "frame L+2cm")[3], centre + [-20, 0, 0])
    np.testing.assert_allclose(robustness.shifted(c, "frame S+2cm")[3], centre + [0, 0, 20])
    np.testing.assert_allclose(robustness.shifted(c, "HU +50")[0], c.ct_hu + 50, atol=1e-3)
    np.testing.assert_allclose(robustness.shifted(c, "HU x0.9")[0], c.ct_hu * 0.9, rtol=1e-6)
    noisy = robustness.shifted(c, "noise 25 HU", seed=1)[0]
    assert np.std(noisy - c.ct_hu) == pytest.approx(25.0, rel=0.05)
    np.testing.assert_array_equal(noisy, robustness.shifted(c, "noise 25 HU", seed=1)[0])
    # z-crop: the lungs and 1 cm (two 8 mm slices) on either side, at the same world points
    ct, mask, aff, _ = robustness.shifted(c, "z-crop")
    zs = np.flatnonzero(c.mask.any(axis=(0, 1)))
    assert ct.shape[2] == min(zs[-1] + 3, 40) - max(zs[0] - 2, 0)
    np.testing.assert_allclose(_world_of_mask(mask, aff), _world_of_mask(c.mask, c.affine))
    # other axis orders: the same voxels at the same world points
    for codes in ("RAS", "SLA"):
        ct, mask, aff, _ = robustness.shifted(c, f"{codes} order")
        assert "".join(nib.aff2axcodes(aff)) == codes
        np.testing.assert_allclose(_world_of_mask(mask, aff), _world_of_mask(c.mask, c.affine))
    # thick slices: half the slices, twice as thick, each the mean of a pair
    ct, mask, aff, _ = robustness.shifted(c, "thick slices")
    assert ct.shape == (80, 72, 20) and geometry.spacing_from_affine(aff)[2] == pytest.approx(16.0)
    np.testing.assert_allclose(ct[:, :, 3], 0.5 * (c.ct_hu[:, :, 6] + c.ct_hu[:, :, 7]), atol=1e-3)
    np.testing.assert_array_equal(mask[:, :, 3], c.mask[:, :, 6])


def test_out_of_fold_members(smoke_cv):
    out = smoke_cv[0]
    manifest = dataio.load_json(out / inference.MANIFEST)
    for m in manifest["members"]:
        for cid in m["test"]:
            assert robustness.out_of_fold_members([out, out], cid) == [out / m["file"]] * 2
    assert robustness.out_of_fold_members([out], "nobody") == []


def test_suite_scores_each_case_out_of_fold(smoke_cv, demo_data, tmp_path):
    out = smoke_cv[0]
    lines = []
    result = robustness.run_suite([out], native_dir=demo_data, max_cases=1,
                                  shifts=("as stored", "HU +50"), log=lines.append)
    assert result["methods"] == ["member", "ensemble_all", "baseline"]
    assert [(r["case_id"], r["shift"]) for r in result["rows"]] == [
        ("synth_000", "as stored"), ("synth_000", "HU +50")]
    assert set(result["summary"]) == {"as stored", "HU +50"} and len(lines) == 1
    case = dataio.load_case(demo_data / "synth_000")

    def mask_of(model):
        fwd = inference.compiled_forward(model)
        return inference.predict_volume(fwd, case.ct_hu, case.affine)["mask"]

    (member,) = robustness.out_of_fold_members([out], "synth_000")
    row = result["rows"][0]
    pred = mask_of(inference.load_model(out))                    # the ensemble's
    assert row["member"] == pytest.approx(metrics.dice(mask_of(inference.load_model(member)),
                                                       case.mask))
    assert row["ensemble_all"] == pytest.approx(metrics.dice(pred, case.mask))
    base = anatomy.classical_lung_mask(case.ct_hu, case.spacing_mm)
    assert row["baseline"] == pytest.approx(metrics.dice(base, case.mask))
    # what the quality flag sees: agreement with the baseline, the members' agreement
    assert row["ensemble_all_vs_baseline"] == pytest.approx(metrics.dice(pred, base))
    assert 0.0 <= row["ensemble_all_members"] <= 1.0 and row["ensemble_all_flag"] in ("ok", "check")
    assert "member_members" not in row and "member_flag" not in row
    power = result["flag_power"]
    assert set(power) == {"member", "ensemble_all"} and power["member"]["n"] == 2
    assert set(power["ensemble_all"]["scores"]) == {"vs_baseline", "members"}
    # two ensembles (say, two repeats of the cross-validation): the out-of-fold average too
    twice = robustness.run_suite([out, out], native_dir=demo_data, max_cases=1,
                                 shifts=("as stored",), log=lines.append)
    assert twice["methods"] == ["member", "member_2", "ensemble_oof", "ensemble_all", "baseline"]
    assert twice["rows"][0]["ensemble_oof"] == pytest.approx(row["member"])   # the same member
    assert twice["rows"][0]["member_2"] == pytest.approx(row["member"])       # member for member
    with pytest.raises(LungsegInputError, match="no member left synth_000 out"):
        robustness.run_suite([out, smoke_run_manifest_without(out, "synth_000", tmp_path)],
                             native_dir=demo_data, max_cases=1, shifts=("as stored",))


def smoke_run_manifest_without(ensemble, case_id: str, tmp_path) -> Path:
    """A copy of ``ensemble``'s manifest in which no member left ``case_id`` out."""
    manifest = dataio.load_json(Path(ensemble) / inference.MANIFEST)
    for m in manifest["members"]:
        m["file"] = str((Path(ensemble) / m["file"]).resolve())
        m["test"] = [c for c in m["test"] if c != case_id]
    dataio.save_json(manifest, tmp_path / "partial" / inference.MANIFEST)
    return tmp_path / "partial"


def test_flag_power_ranks_agreement_against_dice():
    """Rows where low agreement goes with low Dice: Spearman 1, AUC 1 for Dice < 0.97; the
    flag's sensitivity and specificity count rows by their Dice."""
    rows = [{"m": d, "m_vs_baseline": d - 0.01, "m_members": 1.0 - i % 2 * 0.1,
             "m_flag": "check" if d < 0.96 else "ok"}
            for i, d in enumerate([0.99, 0.985, 0.98, 0.975, 0.965, 0.95, 0.9])]
    power = robustness.flag_power(rows, "m")
    assert power["n"] == 7 and power["n_below"] == 3
    assert power["scores"]["vs_baseline"] == {"spearman": pytest.approx(1.0), "auc": 1.0}
    assert 0.0 <= power["scores"]["members"]["auc"] <= 1.0
    assert power["flag"] == {"flagged": 2, "sensitivity": pytest.approx(2 / 3), "specificity": 1.0}
    assert robustness.flag_power(rows[:4], "m")["n_below"] == 0      # no low case: AUC undefined
    assert np.isnan(robustness.flag_power(rows[:4], "m")["scores"]["vs_baseline"]["auc"])


def test_command_line_errors(smoke_cv, tmp_path, capsys):
    taken = tmp_path / "taken.json"
    taken.write_text("{}")
    assert robustness.main(["--ensemble", str(smoke_cv[0]), "--out", str(taken)]) == 2
    assert "exists" in capsys.readouterr().err
    with pytest.raises(LungsegInputError, match="no member left"):
        robustness.run_suite([smoke_cv[0]], native_dir=_renamed(tmp_path), max_cases=1)


def _renamed(tmp_path):
    """A native folder whose one case no member of the smoke ensemble has in its test part."""
    ct, mask, affine = make_phantom(shape=(48, 48, 32), spacing_mm=(6.0, 6.0, 9.0))
    dataio.save_nifti(np.round(ct).astype(np.int16), affine, tmp_path / "nat" / "stranger" / dataio.CT_NAME)
    dataio.save_nifti(mask, affine, tmp_path / "nat" / "stranger" / dataio.MASK_NAME)
    return tmp_path / "nat"
