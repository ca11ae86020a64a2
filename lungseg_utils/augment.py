"""Data augmentation (pure NumPy) and the Keras ``PyDataset`` that feeds training.

Every transform takes the CT (float32 (X, Y, Z) in [0, 1], from
:func:`~lungseg_utils.preprocess.window_normalise`) and its mask (uint8 or float (X, Y, Z),
{0, 1}) and returns both transformed *the same way*: shapes kept, the mask still binary,
CT and mask still aligned. Randomness comes from an explicit ``numpy.random.Generator``.

The dataset draws one generator per sample from ``(seed, epoch, position in the epoch)``,
so a batch is the same whatever the order in which worker threads compute it, and each
epoch sees a new augmentation of every case.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from . import io, preprocess
from .config import HU_WINDOW, MODEL_SHAPE, import_keras_quietly
from .errors import LungsegInputError

keras = import_keras_quietly()

#: Settings read by :func:`augment_pair`; any profile key of the same name overrides them.
DEFAULT_AUGMENT = dict(
    p_flip=0.5,              # probability of flipping, drawn for each axis
    flip_axes=(0, 1, 2),
    p_rot90=0.5,             # probability of one rotation by 90/180/270 degrees
    p_jitter=0.5,
    jitter_sigma=0.03,       # Gaussian noise sigma on the [0, 1] CT (0.03 ~ 39 HU)
    p_elastic=0.3,
    elastic_sigma_mm=3.0,    # largest displacement
    elastic_smooth_mm=40.0,  # Gaussian smoothing of the random field
    p_shift=0.5,
    max_shift_vox=4,         # translation of up to 4 voxels (20 mm) along each axis
    spacing_mm=5.0,          # voxel size of the model grid
)


def _check_pair(ct, mask):
    ct = np.asarray(ct, dtype=np.float32)
    mask = np.asarray(mask)
    if ct.ndim != 3 or ct.shape != mask.shape:
        raise LungsegInputError(
            f"augment: expected CT and mask of the same 3D shape, got {ct.shape} and {mask.shape}.")
    return ct, mask


def random_flip(ct, mask, rng, p: float = 0.5, axes=(0, 1, 2)):
    """Flip along each axis in ``axes`` independently with probability ``p``."""
    ct, mask = _check_pair(ct, mask)
    flip = tuple(a for a in axes if rng.random() < p)
    if flip:
        ct, mask = np.flip(ct, flip), np.flip(mask, flip)
    return np.ascontiguousarray(ct), np.ascontiguousarray(mask)


def random_rot90(ct, mask, rng, p: float = 1.0):
    """With probability ``p``, rotate by 90, 180 or 270 degrees in one of the three planes.

    Rotating a cube keeps its shape; a non-cubic volume is only rotated in a square plane.
    """
    ct, mask = _check_pair(ct, mask)
    if rng.random() >= p:
        return ct, mask
    planes = [pl for pl in ((0, 1), (0, 2), (1, 2)) if ct.shape[pl[0]] == ct.shape[pl[1]]]
    if not planes:
        return ct, mask
    plane = planes[rng.integers(len(planes))]
    k = int(rng.integers(1, 4))
    return (np.ascontiguousarray(np.rot90(ct, k, plane)),
            np.ascontiguousarray(np.rot90(mask, k, plane)))


def intensity_jitter(ct, rng, p: float = 0.5, sigma: float = 0.03):
    """With probability ``p``, add Gaussian noise (std ``sigma``) to the [0, 1] CT, clip to [0, 1]."""
    ct = np.asarray(ct, dtype=np.float32)
    if rng.random() >= p or sigma <= 0:
        return ct
    noise = rng.standard_normal(ct.shape, dtype=np.float32)
    return np.clip(ct + np.float32(sigma) * noise, 0.0, 1.0)


def elastic_field(shape, rng, sigma_mm: float = 3.0, smooth_mm: float = 40.0,
                  spacing_mm: float = 5.0) -> np.ndarray:
    """A smooth random displacement field, in voxels.

    White noise smoothed by a Gaussian of std ``smooth_mm`` (in the Fourier domain, so with
    periodic boundaries, which a stationary random field does not mind), scaled so that the
    largest displacement length is ``sigma_mm``. Returns float32 (3, X, Y, Z): the
    displacement along each axis, in voxels of ``spacing_mm``.
    """
    shape = tuple(int(s) for s in shape)
    s_vox = smooth_mm / spacing_mm
    noise = rng.standard_normal((3, *shape))
    freqs = np.meshgrid(*[np.fft.fftfreq(n) for n in shape[:-1]], np.fft.rfftfreq(shape[-1]),
                        indexing="ij")
    transfer = np.exp(-2.0 * np.pi ** 2 * s_vox ** 2 * sum(f ** 2 for f in freqs))
    field = np.fft.irfftn(np.fft.rfftn(noise, axes=(1, 2, 3)) * transfer, s=shape, axes=(1, 2, 3))
    length = np.sqrt((field ** 2).sum(axis=0)).max()
    field *= (sigma_mm / spacing_mm) / max(length, 1e-12)
    return field.astype(np.float32)


def elastic_deform(ct, mask, rng, sigma_mm: float = 3.0, smooth_mm: float = 40.0,
                   spacing_mm: float = 5.0, field=None):
    """Warp CT and mask by one smooth displacement field (see :func:`elastic_field`).

    CT: trilinear, outside the volume = 0 (air). Mask: trilinear then thresholded at 0.5, so
    it stays binary. ``field`` (3, X, Y, Z), if given, is used instead of a random one.
    Returns (ct float32, mask of the input's dtype).
    """
    ct, mask = _check_pair(ct, mask)
    if field is None:
        field = elastic_field(ct.shape, rng, sigma_mm, smooth_mm, spacing_mm)
    grid = np.indices(ct.shape, dtype=np.float32)
    coords = grid + field
    ct_w = ndi.map_coordinates(ct, coords, order=1, mode="constant", cval=0.0)
    m_w = ndi.map_coordinates(mask.astype(np.float32), coords, order=1, mode="constant", cval=0.0)
    return ct_w.astype(np.float32), (m_w >= 0.5).astype(mask.dtype)


def random_shift(ct, mask, rng, max_shift_vox: int = 4, p: float = 1.0):
    """With probability ``p``, translate by up to ``max_shift_vox`` whole voxels along each axis.

    Voxels shifted in are air: 0.0 in the normalised CT, 0 in the mask. Teaches the model
    that the lungs need not sit at the centre of the grid (a grid centred from the image
    rather than from the label is off by a few voxels).
    """
    ct, mask = _check_pair(ct, mask)
    if rng.random() >= p or max_shift_vox <= 0:
        return ct, mask
    shift = rng.integers(-max_shift_vox, max_shift_vox + 1, size=3)
    out_ct, out_mask = np.zeros_like(ct), np.zeros_like(mask)
    src = tuple(slice(max(0, -s), n - max(0, s)) for s, n in zip(shift, ct.shape))
    dst = tuple(slice(max(0, s), n - max(0, -s)) for s, n in zip(shift, ct.shape))
    out_ct[dst], out_mask[dst] = ct[src], mask[src]
    return out_ct, out_mask


def augment_pair(x, y, rng, settings: dict | None = None):
    """Apply the same random transform to CT ``x`` and mask ``y``.

    Order: elastic (``p_elastic``), shift (``p_shift``), flips (``p_flip``), rot90
    (``p_rot90``), then intensity jitter on the CT only (``p_jitter``). ``settings``
    overrides :data:`DEFAULT_AUGMENT` (extra keys are ignored, so a whole profile can be
    passed). x, y: (X, Y, Z) or (X, Y, Z, 1). Returns (float32 x, y of y's dtype), same shapes.
    """
    s = {**DEFAULT_AUGMENT, **(settings or {})}
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    channel = x.ndim == 4
    if channel:
        x, y = x[..., 0], y[..., 0]
    if rng.random() < s["p_elastic"]:
        x, y = elastic_deform(x, y, rng, s["elastic_sigma_mm"], s["elastic_smooth_mm"],
                              s["spacing_mm"])
    x, y = random_shift(x, y, rng, int(s["max_shift_vox"]), p=s["p_shift"])
    x, y = random_flip(x, y, rng, s["p_flip"], s["flip_axes"])
    x, y = random_rot90(x, y, rng, s["p_rot90"])
    x = intensity_jitter(x, rng, s["p_jitter"], s["jitter_sigma"])
    if channel:
        x, y = x[..., None], y[..., None]
    return x, y


def load_training_arrays(case_dirs, hu_window=HU_WINDOW):
    """Load case folders into float32 arrays X (n, 64, 64, 64, 1) in [0, 1] and Y in {0, 1}."""
    xs, ys = [], []
    for folder in case_dirs:
        case = io.load_case(folder)
        if case.shape != MODEL_SHAPE:
            raise LungsegInputError(
                f"{case.path}: shape {case.shape} is not the model grid {MODEL_SHAPE}; "
                "resample it with lungseg_utils.geometry first.")
        x, y = preprocess.preprocess_case(case.ct_hu, case.mask, hu_window)
        xs.append(x)
        ys.append(y)
    return np.stack(xs), np.stack(ys)


class LungDataset(keras.utils.PyDataset):
    """Batches of (CT, mask) for ``model.fit``, augmented on the fly.

    Parameters
    ----------
    cases : list of case folders, or a tuple (X, Y) of preloaded arrays
        X, Y: float32 (n, 64, 64, 64, 1). Folders are loaded once (``io.load_case`` +
        ``preprocess.preprocess_case``) and kept in memory.
    batch_size : int
    settings : dict, optional
        Augmentation settings (see :data:`DEFAULT_AUGMENT`), e.g. a whole profile.
    seed : int
        With the epoch and the sample's position, fixes every random choice.
    augment : bool
        False for validation: the cases as they are, in order.
    samples_per_epoch : int, optional
        Samples drawn per epoch (default: one pass over the cases). More than the number of
        cases repeats them with different augmentations.
    shuffle : bool, optional
        Reshuffle the order each epoch (default: ``augment``).
    epoch : int
        The epoch to start at (for resumed runs); ``on_epoch_end`` increments it.
    **kwargs
        ``workers``, ``use_multiprocessing``, ``max_queue_size`` for ``PyDataset``.

    ``ds[i]`` returns (x, y), float32 (b, 64, 64, 64, 1) each.
    """

    def __init__(self, cases, batch_size: int = 2, settings: dict | None = None, seed: int = 42,
                 augment: bool = True, samples_per_epoch: int | None = None,
                 shuffle: bool | None = None, epoch: int = 0, **kwargs):
        super().__init__(**kwargs)
        settings = settings or {}
        if isinstance(cases, tuple) and len(cases) == 2 and isinstance(cases[0], np.ndarray):
            self.x, self.y = (np.asarray(a, dtype=np.float32) for a in cases)
        else:
            self.x, self.y = load_training_arrays([Path(c) for c in cases],
                                                  settings.get("hu_window", HU_WINDOW))
        if self.x.ndim == 4:
            self.x, self.y = self.x[..., None], self.y[..., None]
        if len(self.x) == 0 or self.x.shape != self.y.shape:
            raise LungsegInputError(
                f"LungDataset: need n >= 1 CTs and masks of equal shape, got {self.x.shape} "
                f"and {self.y.shape}.")
        if batch_size < 1:
            raise LungsegInputError(f"LungDataset: batch_size={batch_size} must be >= 1.")
        self.batch_size = int(batch_size)
        self.settings = {**DEFAULT_AUGMENT, **settings}
        self.seed = int(seed)
        self.augment = bool(augment)
        self.shuffle = self.augment if shuffle is None else bool(shuffle)
        self.samples_per_epoch = int(samples_per_epoch or len(self.x))
        self.epoch = int(epoch)

    def __len__(self):
        return math.ceil(self.samples_per_epoch / self.batch_size)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """Case index of each sample of ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.x)
        reps = math.ceil(self.samples_per_epoch / n)
        if not self.shuffle:
            return np.tile(np.arange(n), reps)[: self.samples_per_epoch]
        rng = np.random.default_rng([self.seed, epoch, 1 << 30])
        return np.concatenate([rng.permutation(n) for _ in range(reps)])[: self.samples_per_epoch]

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range for {len(self)} batches")
        epoch = self.epoch
        order = self.order(epoch)
        positions = range(index * self.batch_size,
                           min((index + 1) * self.batch_size, self.samples_per_epoch))
        xs, ys = [], []
        for pos in positions:
            x, y = self.x[order[pos]], self.y[order[pos]]
            if self.augment:
                rng = np.random.default_rng([self.seed, epoch, pos])
                x, y = augment_pair(x, y, rng, self.settings)
            xs.append(x)
            ys.append(y)
        return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32)

    def on_epoch_end(self):
        self.epoch += 1


class EpochSetter(keras.callbacks.Callback):
    """Tell a :class:`LungDataset` which epoch ``fit`` is in, before the epoch's batches.

    Keras calls the dataset's ``on_epoch_end`` once before training starts, and a resumed
    run starts at a later epoch; with this callback the augmentation of epoch e is the same
    in a resumed run as in an uninterrupted one.
    """

    def __init__(self, dataset: LungDataset):
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch, logs=None):
        self.dataset.epoch = int(epoch)
