"""Profiles, paths and seeds: the few settings every other module reads.

A *profile* is a named set of training and evaluation settings (:data:`PROFILES`, described in
docs/training.md): ``main`` the recipe and the default, ``smoke`` seconds (the tests'),
``quick`` one model of the original student project's network and schedule, ``full`` the
original's settings, meant for a GPU. The active profile comes from ``$LUNGSEG_PROFILE``, so
that the same notebook runs in seconds under the tests and for real in the main command.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import random
import sys
import warnings
from pathlib import Path

import numpy as np

from .errors import LungsegInputError

#: oneDNN's CPU kernels also where TensorFlow leaves them off (CPUs without AVX-512 VNNI, BF16
#: or AMX: most laptops; faster there too), set before TensorFlow loads; a user's 0 still wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

#: Repository root (the folder holding ``lungseg_utils/``).
REPO_ROOT = Path(__file__).resolve().parent.parent
#: Where notebooks export figures (the tests set ``$LUNGSEG_FIGURES_DIR`` to a temporary folder).
FIGURES_DIR = Path(os.environ.get("LUNGSEG_FIGURES_DIR", REPO_ROOT / "figures"))
RESULTS_DIR = REPO_ROOT / "results"
REFERENCE_DIR = RESULTS_DIR / "reference"
SYNTHETIC_DIR = REPO_ROOT / "data" / "synthetic"

#: The model grid: 64 voxels of 5 mm along each axis (a 320 mm cube).
MODEL_SHAPE = (64, 64, 64)
MODEL_SPACING_MM = 5.0
#: HU window of the original project.
HU_WINDOW = (-1000.0, 300.0)
DEFAULT_SEED = 42

#: The settings every profile starts from (augmentation defaults included: the steps that
#: read them are listed in :data:`lungseg_utils.augment.PIPELINE`).
DEFAULTS = dict(
    hu_window=HU_WINDOW, seed=DEFAULT_SEED, val_fraction=0.15, test_fraction=0.2,
    reg_l2=1e-5, dropout_enc=0.05, dropout_dec=0.05, dropout_bot=0.2,
    use_transpose=False, depth=4, norm="group", loss="dice", learning_rate=1e-3,
    p_flip=0.5, p_rot90=0.5, p_jitter=0.5, jitter_sigma=0.03, p_shift=0.5, max_shift_vox=4,
    p_elastic=0.3, elastic_sigma_mm=3.0, elastic_smooth_mm=40.0,
    # Shifts of real scans (all off in the original's settings; see augment.augment_pair):
    p_affine=0.0, max_rot_deg=10.0, max_scale=0.1,
    p_zcrop=0.0, zcrop_margin_vox=4,
    p_intensity=0.0, hu_offset=50.0, hu_scale=0.1, gamma=0.2,
    p_blur=0.0, max_blur_vox=1.0, max_thick=3,
    mixed_precision=False,   # True: bfloat16; "auto": bfloat16 where the CPU has it
    warmup_epochs=0,         # linear warm-up before the cosine schedule
    samples_per_epoch=None, workers=1, reduce_lr_patience=10, early_stop_patience=30,
    lr_schedule="plateau",   # or "cosine": decays to 1 % at the planned last epoch
    checkpoint="best",       # best_model.keras: lowest val_loss, or "last": the final weights
    budget_min=None,         # wall-clock budget of a run; the epochs are planned to fit it
    validate_every=1,        # validation after every Nth epoch (and the first and last)
    max_cases=None,
    folds=3,                 # members of the ensemble notebook 04 trains
)

#: The recipe that trains the reference from random weights (each choice: docs/training.md).
_RECIPE = dict(base_filters=16, depth=4, epochs=75, batch_size=2, samples_per_epoch=12,
               learning_rate=4e-3, warmup_epochs=4, lr_schedule="cosine", checkpoint="last",
               mixed_precision="auto", max_shift_vox=6, p_affine=0.3, p_zcrop=0.2,
               p_intensity=0.5, p_blur=0.3, folds=3, validate_every=5, workers=2)

PROFILES: dict[str, dict] = {
    "smoke": {**DEFAULTS, "base_filters": 2, "depth": 1, "epochs": 1, "batch_size": 1,
              "max_cases": 4, "reduce_lr_patience": 1, "early_stop_patience": 2, "folds": 2},
    "main": {**DEFAULTS, **_RECIPE},
    "quick": {**DEFAULTS, "base_filters": 16, "epochs": 150, "batch_size": 2,
              "samples_per_epoch": 12},
    "full": {**DEFAULTS, "base_filters": 16, "epochs": 150, "batch_size": 2,
             "reduce_lr_patience": 15, "early_stop_patience": 40},
}

DEFAULT_PROFILE = "main"


def profile_name(name: str | None = None) -> str:
    """Return the active profile's name: ``name`` if given, else ``$LUNGSEG_PROFILE``, else main."""
    name = name or os.environ.get("LUNGSEG_PROFILE", DEFAULT_PROFILE)
    if name not in PROFILES:
        raise LungsegInputError(f"Unknown profile {name!r}: choose one of {', '.join(PROFILES)}.")
    return name


def get_profile(name: str | None = None, **overrides) -> dict:
    """Return a copy of a profile's settings (see module docstring), with ``overrides`` applied."""
    name = profile_name(name)
    settings = dict(PROFILES[name], profile=name)
    if unknown := set(overrides) - set(settings):
        raise LungsegInputError(f"Unknown setting(s) for profile {name!r}: {sorted(unknown)}.")
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings


def active_run_dir() -> Path:
    """The run the notebooks train, evaluate and show (docs/training.md): ``$LUNGSEG_RUN``
    (relative to the repository root) if set, else ``results/reference``; writes nothing."""
    if not (env := os.environ.get("LUNGSEG_RUN")):
        return REFERENCE_DIR
    path = Path(env).expanduser()
    return (path if path.is_absolute() else REPO_ROOT / path).resolve()


def _has_cases(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*/ct.nii.gz"))


def shared_data_root() -> Path:
    """``../shared/data`` beside the checkout (it may not exist)."""
    return REPO_ROOT.parent / "shared" / "data"


def find_data_dir() -> Path | None:
    """The folder of cases, writing nothing: ``$LUNGSEG_DATA`` (it must hold ``*/ct.nii.gz``),
    else ``data/`` if it holds cases, else ``../shared/data/lctsc64`` beside the checkout, else
    None (then :func:`lungseg_utils.synthetic.resolve_data_dir` writes a synthetic demo set)."""
    if env := os.environ.get("LUNGSEG_DATA"):
        folder = Path(env).expanduser().resolve()
        if not _has_cases(folder):
            raise LungsegInputError(f"LUNGSEG_DATA={env} holds no case folders with a ct.nii.gz.")
        return folder
    for folder in (REPO_ROOT / "data", shared_data_root() / "lctsc64"):
        if _has_cases(folder):
            return folder
    return None


def native_data_dir() -> Path | None:
    """``../shared/data/lctsc_native`` (or ``$LUNGSEG_NATIVE_DATA``) if present, else None."""
    folder = Path(os.environ.get("LUNGSEG_NATIVE_DATA") or shared_data_root() / "lctsc_native")
    return folder if _has_cases(folder) else None


def package_versions() -> dict:
    """Versions of Python and of the packages a run depends on (None if not installed)."""
    import platform
    from importlib import metadata

    def version(name):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(name)
        return None

    return {"python": platform.python_version(),
            **{n: version(n) for n in ("numpy", "scipy", "nibabel", "keras")},
            "tensorflow": version("tensorflow") or version("tensorflow-cpu"),
            "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow")}


def training_precision(setting) -> str:
    """Keras dtype policy of a run: ``"mixed_bfloat16"`` for ``True``, or for ``"auto"`` on a
    CPU that computes bfloat16 natively (AVX512_BF16 or AMX-BF16, Linux); else ``"float32"``."""
    if setting == "auto":
        flags = ""
        with contextlib.suppress(OSError):
            flags = Path("/proc/cpuinfo").read_text()
        setting = "avx512_bf16" in flags or "amx_bf16" in flags
    return "mixed_bfloat16" if setting else "float32"


def set_seeds(seed: int = DEFAULT_SEED) -> None:
    """Seed Python, NumPy and (if imported) Keras/TensorFlow from one number."""
    random.seed(seed)
    np.random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    if "keras" in sys.modules:
        import keras
        keras.utils.set_random_seed(seed)


def new_run_dir(root: Path | None = None, prefix: str = "run") -> Path:
    """A new, empty ``<prefix>_YYYYMMDD-HHMMSS`` folder (``_2``, ``_3``… if that second is
    taken) in ``root``, else ``$LUNGSEG_RUNS_DIR``, else ``results/models``; never reused."""
    root = Path(root or os.environ.get("LUNGSEG_RUNS_DIR") or RESULTS_DIR / "models")
    root.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1, 1000):
        folder = root / (f"{prefix}_{stamp}" if i == 1 else f"{prefix}_{stamp}_{i}")
        with contextlib.suppress(FileExistsError):
            folder.mkdir()
            return folder
    raise RuntimeError(f"Could not create a new run folder in {root}.")


def import_keras_quietly():
    """Import Keras (TensorFlow backend by default) and return it, with file descriptor 2 on
    /dev/null meanwhile: TensorFlow prints oneDNN and CUDA lines there whatever
    ``TF_CPP_MIN_LOG_LEVEL`` says, and they would break nbval's output comparison."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        if os.environ["KERAS_BACKEND"] == "tensorflow":
            import tensorflow as tf
            tf.get_logger().setLevel("ERROR")
        import keras
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    warnings.filterwarnings("ignore", module="keras")
    return keras
