"""lungseg_utils.study.compact and train.drop_optimizer: a model stored without its optimizer and with float16 weights still
loads with plain Keras, computes in float32 and predicts what the float32 file predicted;
an ensemble compacted in place keeps its manifest true and records what changed."""

import shutil
import zipfile

import numpy as np
import pytest

from lungseg_utils.study import compact
from lungseg_utils import config, inference, dataio, train, unet
from lungseg_utils.errors import LungsegInputError


@pytest.fixture()
def tiny_model_file(tmp_path):
    keras = config.import_keras_quietly()
    config.set_seeds(0)
    model = unet.build_unet(base_filters=4, depth=2)
    path = tmp_path / "m.keras"
    model.save(path)
    return keras, model, path


def test_float16_storage_halves_the_weights_and_loads_with_plain_keras(tiny_model_file):
    keras, model, path = tiny_model_file
    assert compact.weights_dtype(path) == "float32"
    size32 = path.stat().st_size
    n = compact.convert_weights(path, "float16")
    assert n == len(model.weights)                        # every float32 array converted
    assert compact.weights_dtype(path) == "float16"
    saved = size32 - path.stat().st_size                    # 2 of each weight's 4 bytes
    assert 0.95 * 2 * model.count_params() <= saved <= 2 * model.count_params()
    with zipfile.ZipFile(path) as archive:                 # still a whole .keras archive
        assert {"config.json", "metadata.json", compact.WEIGHTS_ENTRY} <= set(archive.namelist())
    loaded = keras.saving.load_model(path)                  # safe mode, no custom objects
    assert all(str(w.dtype) == "float32" for w in loaded.weights)   # computes in float32
    for w0, w1 in zip(model.weights, loaded.weights):
        a, b = np.asarray(w0), np.asarray(w1)
        assert np.array_equal(b, a.astype(np.float16).astype(np.float32)), w0.path
    x = np.random.default_rng(0).random((1, 64, 64, 64, 1), dtype=np.float32)
    p32, p16 = np.asarray(model(x)), np.asarray(loaded(x))
    assert p16.shape == p32.shape and np.abs(p16 - p32).max() < 1e-2
    assert not np.array_equal(p16, p32)                    # the rounding is real, and small


def test_convert_weights_refuses_what_is_not_a_keras_archive(tmp_path, tiny_model_file):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(LungsegInputError, match="bad.keras: not a .keras archive"):
        compact.convert_weights(bad)
    with pytest.raises(LungsegInputError, match="float64"):
        compact.convert_weights(tiny_model_file[2], "float64")
    assert bad.read_bytes() == b"not a zip"                # nothing written on refusal


def test_a_saved_run_model_has_no_optimizer_state_and_float32_weights(tiny_model_file):
    keras, model, path = tiny_model_file
    unet.compile_model(model)
    model.optimizer.build(model.trainable_variables)      # Adam's moments now exist (as after
    model.save(path)                                      # a step, without tracing one)
    with_optimizer = path.stat().st_size
    train.drop_optimizer(path)
    n_bytes = path.stat().st_size                          # Adam's two moments (8 bytes a
    assert with_optimizer - n_bytes >= 0.95 * 8 * model.count_params()   # weight) gone
    assert compact.weights_dtype(path) == "float32"
    loaded = keras.saving.load_model(path)
    assert getattr(loaded, "optimizer", None) is None       # nothing to resume from
    for w0, w1 in zip(model.weights, loaded.weights):       # the weights themselves unchanged
        assert np.array_equal(np.asarray(w0), np.asarray(w1)), w0.path
    train.drop_optimizer(path.with_name("missing.keras"))  # a missing file: no-op
    assert not path.with_name("missing.keras").exists()


def test_compact_ensemble_updates_the_manifest_and_records_each_case(smoke_cv, demo_data,
                                                                     tmp_path):
    folder = tmp_path / "ens"
    shutil.copytree(smoke_cv[0], folder)
    assert all(compact.weights_dtype(folder / m["file"]) == "float32"     # as training saves
               for m in dataio.load_json(folder / inference.MANIFEST)["members"])
    result = compact.compact_ensemble(folder, {"grid64": demo_data, "native": None})
    manifest = dataio.load_json(folder / inference.MANIFEST)
    for m in manifest["members"]:                          # the manifest still tells the truth
        assert dataio.file_sha256(folder / m["file"]) == m["sha256"]
        assert (folder / m["file"]).stat().st_size == m["bytes"]
        assert compact.weights_dtype(folder / m["file"]) == "float16"
    held_out = sorted(c for m in manifest["members"] for c in m["test"])
    assert sorted(r["case_id"] for r in result["rows"]) == held_out
    assert result["bytes_after"] < result["bytes_before"]
    assert result["max_abs_dice_change"] == max(abs(r["dice_after"] - r["dice_before"])
                                                 for r in result["rows"])
    assert dataio.load_json(folder / "storage.json")["rows"] == result["rows"]
    inference.load_model(folder)                           # still an ensemble that loads
    with pytest.raises(LungsegInputError, match="already stored as float16"):
        compact.compact_ensemble(folder, {"grid64": demo_data, "native": None})
