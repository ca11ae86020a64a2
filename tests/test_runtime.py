"""The scan tool's runtime (issue #28): the ensemble built once, its members' weights read
into it, one traced function of (weights, input): the same probabilities as the members
loaded one by one, under the CPU's precision or any other."""

import json
import shutil

import numpy as np
import pytest

from lungseg_utils import config, dataio, inference
from lungseg_utils.errors import LungsegInputError
from lungseg_utils.scan import runtime
from _shared import two_member_ensemble


def test_one_network_with_each_member_s_weights_gives_each_member_s_probability(
        smoke_model_path, tmp_path):
    folder = two_member_ensemble(tmp_path / "ensemble", smoke_model_path)
    x = np.random.default_rng(0).random((2, 64, 64, 64, 1)).astype(np.float32)
    expected = inference.compiled_forward(inference.load_model(folder), members=True)(x)
    assert not np.allclose(expected[0], expected[1])
    forward = runtime.ensemble_forward(folder, policy="float32")
    got = forward(x)
    assert got.shape == (2, 2, 64, 64, 64, 1) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(forward(x[:1]), expected[:, :1], rtol=1e-5, atol=1e-6)
    mean = runtime.ensemble_forward(folder, members=False, policy="float32")(x)
    np.testing.assert_allclose(mean, expected.mean(axis=0), rtol=1e-5, atol=1e-6)
    # bfloat16 (where a CPU computes it, the default): close, not equal (the smoke network,
    # 2 filters after 2 epochs, has steep voxels: a largest difference of 0.053 measured)
    error = np.abs(runtime.ensemble_forward(folder, policy="mixed_bfloat16")(x) - expected)
    assert 0 < error.mean() < 0.005 and error.max() < 0.1, (error.mean(), error.max())


def test_the_precision_changes_every_layer_but_the_input_and_the_output(smoke_model_path):
    network = runtime.architecture(smoke_model_path)
    mixed = runtime.with_policy(network, "mixed_bfloat16")
    names = {layer["config"]["name"]: layer["config"].get("dtype", {}) for layer in
             mixed["config"]["layers"]}
    found = mixed["config"]["output_layers"]
    output = found[0] if isinstance(found[0], str) else found[0][0]
    policies = {n: d["config"]["name"] for n, d in names.items() if isinstance(d, dict)
                and d.get("class_name") == "DTypePolicy"}
    assert policies[output] == "float32"
    assert {p for n, p in policies.items() if n != output} == {"mixed_bfloat16"}
    assert runtime.with_policy(mixed, "float32") == runtime.with_policy(network, "float32")
    assert runtime.inference_policy() == config.training_precision("auto")


def test_members_are_checked_and_another_architecture_still_runs(smoke_model_path, tmp_path):
    from lungseg_utils import unet

    folder = two_member_ensemble(tmp_path / "mixed", smoke_model_path,
                       other=unet.build_unet(base_filters=2, depth=1))
    x = np.random.default_rng(1).random((1, 64, 64, 64, 1)).astype(np.float32)
    np.testing.assert_allclose(runtime.ensemble_forward(folder)(x),
                               inference.compiled_forward(inference.load_model(folder),
                                                          members=True)(x), atol=1e-6)
    shutil.copyfile(folder / "fold_0.keras", folder / "fold_1.keras")
    with pytest.raises(LungsegInputError, match=r"fold_1\.keras: its SHA-256 differs"):
        runtime.ensemble_forward(folder)


def test_members_saved_with_keras_s_group_normalization_run_with_ours(tmp_path):
    """A member saved with Keras's GroupNormalization (the reference's, before #28) runs
    with ``unet.GroupNorm`` in its place, its own weights read from its file: the same
    probabilities as Keras's model."""
    from lungseg_utils import unet

    rng, folder, entries = np.random.default_rng(2), tmp_path / "keras_norm", []
    folder.mkdir()
    for i in range(2):
        model = unet.build_unet(base_filters=4, depth=2, norm="keras_group")
        model.set_weights([rng.normal(1.0 if w.ndim == 1 else 0.0, 0.3, w.shape).astype(
            np.float32) for w in model.get_weights()])   # norms' gamma and beta not 1 and 0
        model.save(folder / f"fold_{i}.keras")
        entries.append({"file": f"fold_{i}.keras",
                        "sha256": dataio.file_sha256(folder / f"fold_{i}.keras")})
    (folder / inference.MANIFEST).write_text(json.dumps({"members": entries}))
    network = runtime.with_faster_layers(runtime.architecture(folder / "fold_0.keras"))
    kinds = {layer["class_name"] for layer in network["config"]["layers"]}
    assert "GroupNorm" in kinds and "GroupNormalization" not in kinds
    x = np.random.default_rng(3).random((1, 64, 64, 64, 1)).astype(np.float32)
    expected = inference.compiled_forward(inference.load_model(folder), members=True)(x)
    np.testing.assert_allclose(runtime.ensemble_forward(folder, policy="float32")(x), expected,
                               rtol=1e-4, atol=1e-5)
