"""How a trained model is stored: without its optimizer, its weights at half precision.

:func:`compact_model_file` re-saves a finished ``.keras`` file without Adam's moments and with
each float32 weight array stored as float16 (base 16: 65 MB -> 11 MB). It stays an ordinary
Keras archive: ``keras.saving.load_model`` casts the weights back to the layers' float32, so
the network still computes in float32 (docs/studies.md, "Half-precision storage").
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import h5py
import numpy as np

from . import dataio
from .config import import_keras_quietly
from .errors import LungsegInputError

WEIGHTS_ENTRY = "model.weights.h5"
STORAGE_DTYPES = ("float32", "float16")


def _copy_h5(src, dst, dtype: str) -> int:
    """Copy every group, dataset and attribute of h5py ``src`` into ``dst``, float16 and
    float32 datasets as ``dtype``. Returns the number of arrays converted."""
    converted = 0
    dst.attrs.update(src.attrs)
    for name, item in src.items():
        if isinstance(item, h5py.Group):
            converted += _copy_h5(item, dst.create_group(name), dtype)
            continue
        data = item[()]
        if (isinstance(data, np.ndarray) and str(data.dtype) in STORAGE_DTYPES
                and str(data.dtype) != dtype):
            data = data.astype(dtype)
            converted += 1
        dst.create_dataset(name, data=data).attrs.update(item.attrs)
    return converted


def convert_weights(path, dtype: str = "float16") -> int:
    """Rewrite the weights of the ``.keras`` archive ``path`` in place (atomically), every
    float32 or float16 array as ``dtype`` (:data:`STORAGE_DTYPES`); returns how many arrays
    changed. Refuses another dtype and a file that is not a ``.keras`` archive."""
    path = Path(path)
    if dtype not in STORAGE_DTYPES:
        raise LungsegInputError(f"{path}: weights can be stored as {STORAGE_DTYPES}, not {dtype!r}.")
    try:
        with zipfile.ZipFile(path) as archive:
            entries = [(info, archive.read(info.filename)) for info in archive.infolist()]
    except (OSError, zipfile.BadZipFile) as exc:
        raise LungsegInputError(f"{path}: not a .keras archive ({exc}).") from None
    if WEIGHTS_ENTRY not in {info.filename for info, _ in entries}:
        raise LungsegInputError(f"{path}: a .keras archive without {WEIGHTS_ENTRY}.")
    converted = 0
    with dataio.atomic_write(path, overwrite=True) as tmp, zipfile.ZipFile(tmp, "w") as out:
        for info, data in entries:
            if info.filename == WEIGHTS_ENTRY:
                buffer = io.BytesIO()
                with h5py.File(io.BytesIO(data), "r") as src, h5py.File(buffer, "w") as dst:
                    converted = _copy_h5(src, dst, dtype)
                data = buffer.getvalue()
            out.writestr(info, data)
    return converted


def compact_model_file(path) -> None:
    """Re-save a finished ``.keras`` file for inference, in place: without its optimizer state
    and with its weights stored as float16; it loads with a plain
    ``keras.saving.load_model(path)``. A missing file is left missing."""
    path = Path(path)
    if not path.exists():
        return
    model = import_keras_quietly().saving.load_model(path, compile=False)
    with dataio.atomic_write(path, overwrite=True) as tmp:
        model.save(tmp)
        convert_weights(tmp, "float16")
