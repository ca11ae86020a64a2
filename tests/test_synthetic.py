"""lungseg_utils.synthetic: phantoms drawn in world millimetres, the demo
data set and the loud fallback when no real data is found."""

import nibabel as nib
import numpy as np
import pytest

from lungseg_utils import config, dataio, synthetic
from lungseg_utils.geometry import lps_affine


def test_phantom_on_any_grid_is_the_same_anatomy():
    ct, mask, affine = synthetic.make_phantom(seed=3)
    assert ct.shape == mask.shape == (64, 64, 64) and ct.dtype == np.float32
    assert mask.dtype == np.uint8 and 0.05 < mask.mean() < 0.4
    assert -1024 <= ct.min() and ct.max() <= 3071
    assert abs(float(ct[mask > 0].mean()) + 850.0) < 30.0          # aerated lung
    np.testing.assert_allclose(affine, lps_affine((64, 64, 64), 5.0))
    fine, fine_mask, fine_aff = synthetic.make_phantom(shape=(128, 128, 64),
                                                      spacing_mm=(2.5, 2.5, 5.0), seed=3)
    vol = lambda m, a: m.sum() * abs(np.linalg.det(a[:3, :3])) / 1000.0  # noqa: E731
    assert vol(fine_mask, fine_aff) == pytest.approx(vol(mask, affine), rel=0.03)
    again, _, _ = synthetic.make_phantom(seed=3)
    np.testing.assert_array_equal(again, ct)                        # seeded
    other, other_mask, _ = synthetic.make_phantom(seed=4)
    assert not np.array_equal(other_mask, mask)


def test_demo_dataset_keeps_existing_cases(tmp_path):
    folder = synthetic.write_demo_dataset(tmp_path / "demo", n_cases=2)
    case = dataio.load_case(folder / "synth_001")
    assert case.shape == (64, 64, 64) and case.affine[0, 0] == -5.0
    assert nib.load(str(folder / "synth_001" / dataio.CT_NAME)).get_data_dtype() == np.int16
    stamp = (folder / "synth_000" / dataio.CT_NAME).stat().st_mtime_ns
    synthetic.write_demo_dataset(folder, n_cases=3)
    assert (folder / "synth_000" / dataio.CT_NAME).stat().st_mtime_ns == stamp   # kept
    assert len(dataio.discover_cases(folder)) == 3


def test_resolve_data_dir_writes_the_demo_set_only_as_a_fallback(tmp_path, monkeypatch, capsys):
    repo = tmp_path / "repo"
    monkeypatch.delenv("LUNGSEG_DATA", raising=False)
    monkeypatch.setattr(config, "REPO_ROOT", repo)
    monkeypatch.setattr(config, "SYNTHETIC_DIR", repo / "data" / "synthetic")
    folder = synthetic.resolve_data_dir(verbose=True)
    assert folder == repo / "data" / "synthetic"
    assert len(list(folder.glob("*/ct.nii.gz"))) >= 2
    assert "NO REAL DATA FOUND" in capsys.readouterr().out         # announced loudly
    synthetic.resolve_data_dir(verbose=False)
    assert capsys.readouterr().out == ""
    real = synthetic.write_demo_dataset(tmp_path / "real", n_cases=1)
    monkeypatch.setenv("LUNGSEG_DATA", str(real))
    assert synthetic.resolve_data_dir() == real.resolve()           # real data: no fallback
    assert capsys.readouterr().out == ""
