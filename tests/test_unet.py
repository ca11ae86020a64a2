"""lungseg_utils.unet: the 3D U-Net's shapes, parameter and FLOP counts, save/load round trip
(safe mode, no custom objects), losses and metrics."""

import numpy as np
import pytest

from lungseg_utils import unet

keras = unet.keras


@pytest.mark.parametrize("use_transpose", [False, True])
def test_builds_and_outputs_probabilities(use_transpose):
    m = unet.build_unet(base_filters=4, use_transpose=use_transpose)
    x = np.random.default_rng(0).random((2, 64, 64, 64, 1), dtype=np.float32)
    y = np.asarray(m(x, training=False))
    assert y.shape == (2, 64, 64, 64, 1)
    assert y.dtype == np.float32
    assert 0.0 <= y.min() and y.max() <= 1.0
    kinds = {type(layer).__name__ for layer in m.layers}
    assert ("Conv3DTranspose" in kinds) == use_transpose
    assert ("UpSampling3D" in kinds) != use_transpose
    assert {"GroupNorm", "Dropout", "Add", "MaxPooling3D"} <= kinds
    convs = [layer for layer in m.layers if type(layer).__name__.startswith("Conv3D")]
    assert all(layer.kernel_regularizer is not None for layer in convs)


def test_parameter_count_matches_the_original():
    # GUIDE.md: the original at base 16 has 5.43 M parameters (1.36 M at base 8).
    assert unet.build_unet(base_filters=16).count_params() == pytest.approx(5.43e6, rel=0.005)
    assert unet.build_unet(base_filters=8).count_params() == pytest.approx(1.36e6, rel=0.005)


def test_count_flops_close_to_the_guide():
    # GUIDE.md: 30.4 GFLOP per forward pass at base 16 (convolutions dominate).
    flops = unet.count_flops(unet.build_unet(base_filters=16))
    assert flops == pytest.approx(30.4e9, rel=0.03)


@pytest.mark.parametrize("norm", ["batch", "keras_group", None])
def test_other_normalisations(norm):
    m = unet.build_unet(base_filters=4, norm=norm, depth=3)
    kinds = {type(layer).__name__ for layer in m.layers}
    assert ("BatchNormalization" in kinds) == (norm == "batch")
    assert ("GroupNormalization" in kinds) == (norm == "keras_group")
    assert "GroupNorm" not in kinds


@pytest.mark.parametrize("groups, channels", [(8, 16), (6, 12), (4, 4)])
def test_group_norm_equals_keras_group_normalization(groups, channels):
    # the faster layer computes Keras's GroupNormalization: the same outputs and gradients
    import tensorflow as tf
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(1.5, 3.0, (2, 6, 5, 4, channels)).astype("float32"))
    weights = [rng.uniform(0.5, 1.5, channels).astype("float32"),
               rng.normal(0, 1, channels).astype("float32")]
    ours, theirs = unet.GroupNorm(groups=groups), keras.layers.GroupNormalization(groups=groups)
    results = []
    for layer in (ours, theirs):
        layer.build(x.shape)
        layer.set_weights(weights)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * tf.sin(tf.range(y.shape[-1], dtype=y.dtype)))
        grads = tape.gradient(loss, [x, *layer.trainable_weights])
        results.append([y.numpy(), *(g.numpy() for g in grads)])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert abs(results[0][0].mean()) > 0.01   # a non-trivial output (beta is not zero)


def test_group_count_divides_filters():
    assert unet._groups(16) == 8 and unet._groups(4) == 4 and unet._groups(12) == 6


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="norm"):
        unet.build_unet(base_filters=4, norm="layer")
    with pytest.raises(ValueError, match="divisible"):
        unet.build_unet(input_shape=(60, 64, 64, 1), base_filters=4)


def test_save_and_load_round_trip(tmp_path):
    # a small input and one level: the round trip of the registered objects, quickly
    m = unet.compile_model(unet.build_unet(input_shape=(16, 16, 16, 1), base_filters=2, depth=1),
                           loss="hybrid")
    x = np.random.default_rng(1).random((1, 16, 16, 16, 1), dtype=np.float32)
    y = (x > 0.5).astype(np.float32)
    m.optimizer.build(m.trainable_variables)  # optimizer state, saved too (no traced step)
    m.optimizer.iterations.assign(7)
    path = tmp_path / "m.keras"
    m.save(path)
    loaded = keras.saving.load_model(path)  # safe_mode=True, no custom_objects
    np.testing.assert_allclose(np.asarray(loaded(x, training=False)),
                               np.asarray(m(x, training=False)), rtol=1e-6, atol=1e-7)
    assert isinstance(loaded.loss, unet.HybridLoss)
    assert int(loaded.optimizer.iterations) == 7
    assert len(loaded.optimizer.variables) == len(m.optimizer.variables) > 2
    assert {"dice", "iou"} <= set(loaded.evaluate(x, y, verbose=0, return_dict=True))


def test_build_from_settings_uses_the_profile_keys():
    m = unet.build_from_settings(dict(base_filters=2, depth=1, norm=None, use_transpose=True,
                                      dropout_enc=0.0, dropout_dec=0.0, dropout_bot=0.0,
                                      epochs=3, loss="dice"))
    kinds = [type(layer).__name__ for layer in m.layers]
    assert "Conv3DTranspose" in kinds and "Dropout" not in kinds
    assert "GroupNormalization" not in kinds and kinds.count("MaxPooling3D") == 1
    assert m.get_layer("enc0_conv1").filters == 2


def test_mixed_precision_output_is_float32():
    previous = keras.mixed_precision.global_policy()
    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        m = unet.build_unet(base_filters=4, depth=2)
        out = m(np.zeros((1, 64, 64, 64, 1), np.float32), training=False)
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
        assert m.get_layer("enc0_conv1").compute_dtype == "bfloat16"
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _vol(value, b=2):
    return np.full((b, 8, 8, 8, 1), value, np.float32)


def test_dice_loss_extremes():
    loss = unet.DiceLoss()
    rng = np.random.default_rng(2)
    t = (rng.random((2, 8, 8, 8, 1)) > 0.5).astype(np.float32)
    assert float(loss(t, t)) == pytest.approx(0.0, abs=1e-3)
    assert float(loss(_vol(0.0), _vol(1.0))) == pytest.approx(1.0, abs=2e-3)
    assert float(loss(_vol(1.0), _vol(0.0))) == pytest.approx(1.0, abs=2e-3)


def test_dice_loss_is_per_sample_then_averaged():
    # Sample 0 perfect, sample 1 all wrong: mean of per-sample losses is 0.5, while a
    # Dice pooled over the batch would give about 0.33.
    t = np.stack([np.ones((8, 8, 8, 1)), np.zeros((8, 8, 8, 1))]).astype(np.float32)
    p = np.stack([np.ones((8, 8, 8, 1)), np.ones((8, 8, 8, 1))]).astype(np.float32)
    assert float(unet.DiceLoss()(t, p)) == pytest.approx(0.5, abs=2e-3)


def test_hybrid_loss_is_dice_plus_bce():
    rng = np.random.default_rng(3)
    t = (rng.random((2, 8, 8, 8, 1)) > 0.5).astype(np.float32)
    p = np.clip(rng.random((2, 8, 8, 8, 1)), 0.01, 0.99).astype(np.float32)
    dice = float(unet.DiceLoss()(t, p))
    bce = float(np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p))))
    assert float(unet.HybridLoss()(t, p)) == pytest.approx(0.5 * dice + 0.5 * bce, rel=1e-4)


def test_losses_serialise():
    for cls in (unet.DiceLoss, unet.HybridLoss):
        obj = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(cls()))
        assert isinstance(obj, cls)


def test_hard_metrics_threshold_at_half():
    t = np.zeros((1, 4, 4, 4, 1), np.float32)
    t[0, :2] = 1.0  # 32 voxels
    p = np.where(t > 0, 0.6, 0.4).astype(np.float32)  # right after thresholding
    assert float(np.mean(unet.dice_coef(t, p))) == pytest.approx(1.0)
    p_half = p.copy()
    p_half[0, 0] = 0.1  # 16 of the 32 lung voxels missed
    assert float(np.mean(unet.dice_coef(t, p_half))) == pytest.approx((32 + 1) / (48 + 1))
    assert float(np.mean(unet.iou_coef(t, p_half))) == pytest.approx((16 + 1) / (32 + 1))
    metric = unet.Dice()
    metric.update_state(t, p)
    assert metric.name == "dice" and float(metric.result()) == pytest.approx(1.0)
    assert unet.IoU().name == "iou"
