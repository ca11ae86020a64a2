"""The boundary rule (issue #26): on a 64^3 input, dark voxels just outside the network's
boundary are added; both grids' thresholds are chosen out of fold, and the constants the
pipeline uses are the choices the reference's refine.json makes."""

import numpy as np
import pytest

from lungseg_utils import config, dataio, geometry, inference
from lungseg_utils.study import refine


def test_on_the_model_grid_only_dark_voxels_just_outside_the_boundary_are_added():
    ct = np.full((64, 64, 64), 40.0, np.float32)           # soft tissue
    ct[12:52, 12:52, 12:52] = -850.0                        # aerated lung, 40 voxels wide
    ct[11, 20:30, 20:30] = -700.0                           # a dark rim the network missed
    ct[11, 40:50, 40:50] = -100.0                           # a bright one: not lung
    ct[30, 30, 30] = 100.0                                  # a vessel inside: stays lung
    prob64 = np.zeros_like(ct)
    prob64[12:52, 12:52, 12:52] = 0.99
    prob64[11, 12:52, 12:52] = 0.2                          # the network doubts the rim
    ct[8, 20:30, 20:30], prob64[8, 20:30, 20:30] = -850.0, 0.2  # air 3 voxels out: not looked at
    affine = geometry.model_affine((0.0, 0.0, 0.0))
    grid = geometry.to_model_grid(ct, affine)[1]
    assert grid.passthrough
    body = np.ones(ct.shape, bool)
    out = inference.masks_from_prob64(prob64, grid, ct, body=body)
    added = (out["mask"] > 0) & (out["mask_network"] == 0)
    assert added[11, 20:30, 20:30].all() and added.sum() == 100
    assert out["mask"][30, 30, 30] == 1 and out["mask"][11, 40:50, 40:50].sum() == 0
    raw = inference.masks_from_prob64(prob64, grid, ct, body=body, refine=False)
    np.testing.assert_array_equal(raw["mask"], raw["mask_network"])


def _rows(table):
    return [{"case_id": f"c{i}", "fold": f"CV fold {i // 2}", "dice": dict(zip(("none", "-400",
                                                                                "-300"), d))}
            for i, d in enumerate(table)]


def test_the_choice_is_the_best_mean_and_the_nested_estimate_leaves_each_fold_out():
    rows = _rows([(0.97, 0.98, 0.99), (0.97, 0.98, 0.99),     # fold 0 likes -300
                  (0.97, 0.99, 0.96), (0.97, 0.99, 0.96)])    # fold 1 likes -400
    result = refine.choose(rows)
    assert result["choice"] == "-400"                          # 0.985 against 0.975
    assert result["nested_choices"] == {"CV fold 0": "-400", "CV fold 1": "-300"}
    assert result["nested_mean_dice"] == pytest.approx(np.mean([0.98, 0.98, 0.96, 0.96]))
    assert result["none_mean_dice"] == pytest.approx(0.97)


@pytest.mark.parametrize("grid", ["grid64", "native"])
def test_the_pipeline_s_thresholds_are_the_ones_the_reference_s_refine_json_gives(grid):
    block = dataio.load_json(config.REFERENCE_DIR / "refine.json")[grid]
    assert block["candidates_hu"] == [refine.label(h) for h in refine.CANDIDATES_HU[grid]]
    result = refine.choose(block["cases"])
    constant = getattr(inference, refine.CONSTANTS[grid])
    assert result["choice"] == block["choice"] == refine.label(constant)
    assert result["nested_mean_dice"] >= result["none_mean_dice"], result
