"""The compact residual 3D U-Net of the original project, its losses and its metrics.

Written with ``keras.layers`` and ``keras.ops`` only (no ``tf.*``, no ``Lambda``), so it builds
under any Keras backend. Importing this module registers the losses and metrics (package
``lungseg``), so a saved ``.keras`` model loads with ``keras.saving.load_model(path)``.
"""

from __future__ import annotations

import math

from .config import MODEL_SHAPE, import_keras_quietly

keras = import_keras_quietly()
from keras import layers, ops  # noqa: E402

_register = keras.saving.register_keras_serializable(package="lungseg")


# --------------------------------------------------------------------------- network
def _groups(filters: int, max_groups: int = 8) -> int:
    """Largest group count <= ``max_groups`` that divides ``filters`` (8 for 16, 6 for 12)."""
    return next(g for g in range(min(max_groups, filters), 0, -1) if filters % g == 0)


@_register
class GroupNorm(layers.GroupNormalization):
    """Keras's ``GroupNormalization`` (the same outputs, float32 statistics; built with its
    defaults, center and scale) in fewer passes over the tensor: per sample and group the mean
    m and variance v = E[x^2] - m^2, then one multiply-add per voxel, x * s + t, with
    s = gamma / sqrt(v + epsilon) and t = beta - m * s per channel. (b, X, Y, Z, C) -> the
    same shape. A bfloat16 training step: 0.81 s against 0.98 s (benchmarks/RESULTS.md)."""

    def call(self, inputs):
        c, g = inputs.shape[-1], self.groups
        x, voxels = ops.cast(inputs, "float32"), tuple(range(1, len(inputs.shape) - 1))

        def per_channel(moment):   # (b, C) -> the mean of each channel's group, (b, C)
            grouped = ops.mean(ops.reshape(moment, (-1, g, c // g)), axis=-1, keepdims=True)
            return ops.reshape(ops.repeat(grouped, c // g, axis=-1), (-1, c))

        mean = per_channel(ops.mean(x, axis=voxels))
        variance = ops.maximum(per_channel(ops.mean(ops.square(x), axis=voxels)) - mean**2, 0.0)
        scale = ops.cast(self.gamma, "float32") * ops.rsqrt(variance + self.epsilon)
        shift = ops.cast(self.beta, "float32") - mean * scale
        to_voxels = (-1,) + (1,) * len(voxels) + (c,)
        y = x * ops.reshape(scale, to_voxels) + ops.reshape(shift, to_voxels)
        return ops.cast(y, self.compute_dtype)


#: The normalisations of ``build_unet(norm=...)``: ours, Keras's own group normalisation (the
#: same result, slower: the benchmark's before) and batch normalisation.
NORMS = {"group": GroupNorm, "keras_group": layers.GroupNormalization,
         "batch": layers.BatchNormalization}


def _norm(x, norm, name):
    if norm is None:
        return x
    groups = {} if norm == "batch" else {"groups": _groups(x.shape[-1])}
    return NORMS[norm](name=name, **groups)(x)


def _conv(filters, kernel, reg, name):
    return layers.Conv3D(filters, kernel, padding="same", kernel_initializer="he_normal",
                         kernel_regularizer=reg, name=name)


def residual_block(x, filters, reg, norm, name):
    """One residual block: conv-norm-relu, conv-norm, + shortcut (1x1x1 where the channels
    change), relu. ``x``: a (b, X, Y, Z, C) Keras tensor; returns (b, X, Y, Z, ``filters``)."""
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = _conv(filters, 1, reg, f"{name}_proj")(x)
    y = _conv(filters, 3, reg, f"{name}_conv1")(x)
    y = layers.Activation("relu", name=f"{name}_relu1")(_norm(y, norm, f"{name}_norm1"))
    y = _norm(_conv(filters, 3, reg, f"{name}_conv2")(y), norm, f"{name}_norm2")
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.Activation("relu", name=f"{name}_relu2")(y)


def build_unet(input_shape=(*MODEL_SHAPE, 1), base_filters: int = 16, depth: int = 4,
               reg_l2: float = 1e-5, dropout_enc: float = 0.05, dropout_dec: float = 0.05,
               dropout_bot: float = 0.2, use_transpose: bool = False, norm: str | None = "group",
               name: str = "unet3d"):
    """Build the residual 3D U-Net: ``depth`` encoder levels of ``base_filters * 2**level``
    filters, a bottleneck, and the mirrored decoder with skip connections.

    ``input_shape`` (X, Y, Z, 1): each spatial size divisible by ``2**depth`` (else ValueError).
    ``depth`` 4: 64 -> 32 -> 16 -> 8 -> bottleneck at 4^3 (the original: 5.43 M parameters at
    base 16). ``reg_l2``: L2 on every Conv3D kernel. ``dropout_*``: after each encoder block,
    decoder block and the bottleneck. ``use_transpose``: up-sample with ``Conv3DTranspose``, not
    ``UpSampling3D`` + 1x1 ``Conv3D``. ``norm``: 'group' (8 groups, fewer if 8 does not divide
    the filters), 'keras_group', 'batch' or None (:data:`NORMS`). Returns a keras.Model:
    float (b, X, Y, Z, 1) -> float32 probabilities (b, X, Y, Z, 1), even under a
    mixed-precision policy."""
    if norm not in (*NORMS, None, "none"):
        raise ValueError(f"build_unet: norm={norm!r} must be one of {sorted(NORMS)} or None.")
    norm = None if norm == "none" else norm
    if any(int(s) % 2 ** depth for s in input_shape[:3]):
        raise ValueError(f"build_unet: input_shape {input_shape} is not divisible by "
                         f"2**depth={2 ** depth}.")
    reg = keras.regularizers.L2(reg_l2) if reg_l2 else None
    inputs = keras.Input(shape=tuple(input_shape), name="ct")
    x, skips = inputs, []
    for level in range(depth):
        f = base_filters * 2 ** level
        x = residual_block(x, f, reg, norm, f"enc{level}")
        if dropout_enc:
            x = layers.Dropout(dropout_enc, name=f"enc{level}_drop")(x)
        skips.append(x)
        x = layers.MaxPooling3D(2, name=f"enc{level}_pool")(x)
    x = residual_block(x, base_filters * 2 ** depth, reg, norm, "bottleneck")
    if dropout_bot:
        x = layers.Dropout(dropout_bot, name="bottleneck_drop")(x)
    for level in reversed(range(depth)):
        f = base_filters * 2 ** level
        if use_transpose:
            x = layers.Conv3DTranspose(f, 2, strides=2, kernel_initializer="he_normal",
                                       kernel_regularizer=reg, name=f"dec{level}_upconv")(x)
        else:
            x = layers.UpSampling3D(2, name=f"dec{level}_up")(x)
            x = _conv(f, 1, reg, f"dec{level}_upconv")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level]])
        x = residual_block(x, f, reg, norm, f"dec{level}")
        if dropout_dec:
            x = layers.Dropout(dropout_dec, name=f"dec{level}_drop")(x)
    outputs = layers.Conv3D(1, 1, activation="sigmoid", kernel_regularizer=reg,
                            dtype="float32", name="lung_prob")(x)
    return keras.Model(inputs, outputs, name=name)


def level_table(model) -> list[dict]:
    """The network block by block (layers sharing a name prefix: ``enc0`` ... ``bottleneck`` ...
    ``dec0``, ``lung_prob``; no input layer), in order: one row each of ``{"block", "layers",
    "output" (its last layer's shape without the batch axis), "params"}``."""
    rows = {}
    for layer in model.layers:
        if isinstance(layer, layers.InputLayer):
            continue
        block = layer.name.split("_")[0] if layer.name != "lung_prob" else layer.name
        row = rows.setdefault(block, {"block": block, "layers": 0, "output": None, "params": 0})
        row["layers"] += 1
        row["output"] = tuple(layer.output.shape[1:])
        row["params"] += layer.count_params()
    return list(rows.values())


def count_flops(model) -> int:
    """Forward-pass floating-point operations of ``model`` for one sample: Conv3D 2 k^3 Cin Cout
    per output voxel (+ bias), Conv3DTranspose the same per *input* voxel, normalisation 8,
    activation / add / dropout 1 per output element, pooling 1 per input element."""
    total = 0
    for layer in model.layers:
        kind, n_out = type(layer).__name__, math.prod(layer.output.shape[1:])
        if kind == "Conv3D":
            k = math.prod(layer.kernel_size)
            total += n_out * (2 * k * layer.input.shape[-1] + (1 if layer.use_bias else 0))
        elif kind == "Conv3DTranspose":
            k, n_in = math.prod(layer.kernel_size), math.prod(layer.input.shape[1:-1])
            total += 2 * k * layer.input.shape[-1] * layer.output.shape[-1] * n_in + n_out
        elif kind in ("GroupNorm", "GroupNormalization", "BatchNormalization",
                      "LayerNormalization"):
            total += 8 * n_out
        elif kind in ("Activation", "Add", "Dropout", "ReLU"):
            total += n_out
        elif kind in ("MaxPooling3D", "AveragePooling3D"):
            total += math.prod(layer.input.shape[1:])
    return int(total)


# --------------------------------------------------------------------------- losses
def _per_sample_sums(y_true, y_pred):
    """Cast to float32 and flatten each sample: returns (y_true, y_pred) of shape (b, n)."""
    return tuple(ops.reshape(ops.cast(v, "float32"), (ops.shape(v)[0], -1))
                 for v in (y_true, y_pred))


def soft_dice_per_sample(y_true, y_pred, smooth: float = 1.0):
    """Soft Dice of each sample over its volume: (2 sum(t p) + s) / (sum t + sum p + s).
    y_true, y_pred: (b, X, Y, Z, 1) in [0, 1]; returns float32 (b,)."""
    t, p = _per_sample_sums(y_true, y_pred)
    inter = ops.sum(t * p, axis=1)
    return (2.0 * inter + smooth) / (ops.sum(t, axis=1) + ops.sum(p, axis=1) + smooth)


@_register
class DiceLoss(keras.losses.Loss):
    """1 - soft Dice, computed per sample over the volume (smooth = 1), then averaged."""

    def __init__(self, smooth: float = 1.0, name: str = "dice_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        return 1.0 - soft_dice_per_sample(y_true, y_pred, self.smooth)

    def get_config(self):
        return {**super().get_config(), "smooth": self.smooth}


@_register
class HybridLoss(DiceLoss):
    """``dice_weight`` * the Dice loss + the rest * binary cross-entropy, per sample, averaged."""

    def __init__(self, smooth: float = 1.0, dice_weight: float = 0.5, name: str = "hybrid_loss",
                 **kwargs):
        super().__init__(smooth, name=name, **kwargs)
        self.dice_weight = float(dice_weight)

    def call(self, y_true, y_pred):
        t, p = _per_sample_sums(y_true, y_pred)
        p = ops.clip(p, 1e-7, 1.0 - 1e-7)
        bce = -ops.mean(t * ops.log(p) + (1.0 - t) * ops.log(1.0 - p), axis=1)
        return self.dice_weight * super().call(y_true, y_pred) + (1.0 - self.dice_weight) * bce

    def get_config(self):
        return {**super().get_config(), "dice_weight": self.dice_weight}


#: The training losses (profile key ``loss``): a new loss is its class above and an entry here.
LOSSES = {"dice": DiceLoss, "hybrid": HybridLoss}


def get_loss(name: str):
    """The loss registered as ``name`` in :data:`LOSSES`: 'dice' -> DiceLoss(), ..."""
    if name not in LOSSES:
        raise ValueError(f"loss={name!r} must be one of {sorted(LOSSES)}.")
    return LOSSES[name]()


# --------------------------------------------------------------------------- metrics
# Hard: the prediction thresholded at 0.5 as at test time, scored per sample with smooth = 1
# (empty vs empty scores 1), then averaged over the samples of the epoch.
@_register
def dice_coef(y_true, y_pred, threshold: float = 0.5, smooth: float = 1.0):
    """Hard Dice per sample: prediction > ``threshold``. Returns float32 (b,)."""
    return soft_dice_per_sample(y_true, ops.greater(y_pred, threshold), smooth)


@_register
def iou_coef(y_true, y_pred, threshold: float = 0.5, smooth: float = 1.0):
    """Hard IoU (Jaccard) per sample: prediction > ``threshold``. Returns float32 (b,)."""
    t, p = _per_sample_sums(y_true, ops.greater(y_pred, threshold))
    inter = ops.sum(t * p, axis=1)
    return (inter + smooth) / (ops.sum(t, axis=1) + ops.sum(p, axis=1) - inter + smooth)


class _HardMetric(keras.metrics.MeanMetricWrapper):
    """The mean over the samples of the per-sample score ``_fn``, named ``_default_name``."""

    _fn = _default_name = None

    def __init__(self, name=None, threshold: float = 0.5, dtype=None):
        super().__init__(fn=type(self)._fn, name=name or self._default_name, dtype=dtype,
                         threshold=threshold)
        self.threshold = float(threshold)

    def get_config(self):
        return {"name": self.name, "threshold": self.threshold, "dtype": self.dtype}


@_register
class Dice(_HardMetric):
    """Mean hard Dice over samples, logged as ``dice`` / ``val_dice``."""

    _fn, _default_name = staticmethod(dice_coef), "dice"


@_register
class IoU(_HardMetric):
    """Mean hard IoU over samples, logged as ``iou`` / ``val_iou``."""

    _fn, _default_name = staticmethod(iou_coef), "iou"


def compile_model(model, loss: str = "dice", learning_rate: float = 1e-3):
    """Compile with Adam, the named loss and the ``dice`` / ``iou`` metrics; returns model."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=get_loss(loss),
                  metrics=[Dice(), IoU()])
    return model


def build_from_settings(settings: dict):
    """``build_unet`` with the matching keys of a profile (``config.get_profile``)."""
    keys = ("base_filters", "depth", "reg_l2", "dropout_enc", "dropout_dec", "dropout_bot",
            "use_transpose", "norm")
    return build_unet(**{k: settings[k] for k in keys if k in settings})
