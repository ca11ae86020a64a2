"""An ensemble's members stored at half precision, and what that changes, measured.

:func:`compact_ensemble` converts each member's weights (:func:`convert_weights`)
and scores every member on its own out-of-fold cases before and after, so the saving comes
with its cost in Dice beside it::

    lungseg storage results/reference      # -> results/reference/storage.json
    python -m lungseg_utils.study.compact results/reference      # the same
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import h5py
import numpy as np

from .. import experiments, inference, dataio, metrics
from ..errors import LungsegInputError
from ..runs.command import run_command

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


def weights_dtype(path) -> str:
    """The dtype the float weights of a ``.keras`` file are stored in: ``"float32"``,
    ``"float16"``, or ``"mixed"``."""
    path = Path(path)
    with zipfile.ZipFile(path) as archive, h5py.File(
            io.BytesIO(archive.read(WEIGHTS_ENTRY)), "r") as h5:
        found = set()
        h5.visititems(lambda _, item: found.add(str(item.dtype)) if isinstance(
            item, h5py.Dataset) and item.dtype.kind == "f" else None)
    return found.pop() if len(found) == 1 else ("mixed" if found else "float32")


def member_scores(model_path, case_ids, folders: dict) -> dict:
    """``{(case_id, grid): (prob64 float32 (64,64,64), mask uint8, Dice)}`` of one model
    file on its cases, for each grid folder of ``folders`` that is not None (here before and
    after storage; :mod:`lungseg_utils.study.ensemble_size` scores the members of candidates)."""
    forward = inference.compiled_forward(inference.load_model(model_path))
    out = {}
    for grid, folder in folders.items():
        for cid in case_ids if folder else ():
            case = dataio.load_case(Path(folder) / cid)
            res = inference.predict_volume(forward, case.ct_hu, case.affine)
            out[cid, grid] = (res["prob64"], res["mask"], metrics.dice(res["mask"], case.mask))
    return out


def compact_ensemble(folder, folders: dict, dtype: str = "float16") -> dict:
    """Store every member of the ensemble ``folder`` with its weights as ``dtype`` and
    measure what that changes, case by case.

    ``folders``: ``{"grid64": dir, "native": dir or None}``; each member predicts its own
    (out-of-fold) test cases on each grid before and after. Refuses an ensemble whose
    members are already stored at ``dtype`` (nothing to measure). Updates the members'
    ``sha256`` and ``bytes`` in ``folder/manifest.json`` and in ``folder/cv/manifest.json``
    where there is one, and writes ``folder/storage.json``: ``{"dtype", "bytes_before",
    "bytes_after", "rows": [{"case_id", "grid", "fold", "dice_before", "dice_after",
    "max_abs_prob64_change", "changed_voxels"}], "max_abs_dice_change"}``. Returns it.
    """
    folder = Path(folder)
    manifest = dataio.load_json(folder / inference.MANIFEST)
    files = [folder / m["file"] for m in manifest["members"]]
    already = [f for f in files if weights_dtype(f) == dtype]
    if already:
        raise LungsegInputError(f"{already[0]}: weights already stored as {dtype}.")
    rows, before_bytes, after_bytes = [], 0, 0
    for member, path in zip(manifest["members"], files):
        before = member_scores(path, member["test"], folders)
        before_bytes += path.stat().st_size
        convert_weights(path, dtype)
        after_bytes += path.stat().st_size
        after = member_scores(path, member["test"], folders)
        for key, (p0, m0, d0) in before.items():
            p1, m1, d1 = after[key]
            rows.append({"case_id": key[0], "grid": key[1], "fold": member["fold"],
                         "dice_before": d0, "dice_after": d1,
                         "max_abs_prob64_change": float(np.abs(p1 - p0).max()),
                         "changed_voxels": int((m0 != m1).sum())})
        member.update(sha256=dataio.file_sha256(path), bytes=path.stat().st_size)
    for path in (folder / inference.MANIFEST, folder / "cv" / inference.MANIFEST):
        if path.exists():
            m = dataio.load_json(path)
            prefix = "" if path.parent == folder else "cv/"
            for entry in m["members"]:
                new = next(x for x in manifest["members"] if x["file"] == prefix + entry["file"])
                entry.update(sha256=new["sha256"], bytes=new["bytes"])
            dataio.save_json(m, path, overwrite=True)
    rows.sort(key=lambda r: (r["grid"], r["case_id"]))
    result = {"run": experiments.run_identity(folder), "dtype": dtype,
              "bytes_before": before_bytes, "bytes_after": after_bytes, "rows": rows,
              "max_abs_dice_change": max(abs(r["dice_after"] - r["dice_before"]) for r in rows)}
    dataio.save_json(result, folder / "storage.json", overwrite=True)
    return result


def build_parser(prog: str | None = None):
    import argparse

    p = argparse.ArgumentParser(
        prog=prog or "python -m lungseg_utils.study.compact",
        description="Store an ensemble's member weights at half precision (half the bytes). "
                    "What that changes is measured on each member's out-of-fold cases "
                    "(ENSEMBLE/storage.json).")
    p.add_argument("ensemble", help="an ensemble folder (holding manifest.json)")
    p.add_argument("--dtype", default="float16", choices=STORAGE_DTYPES)
    return p


def run(args) -> int:
    """The conversion on parsed ``args`` (:func:`build_parser`); bad input raises."""
    from .. import config, synthetic

    result = compact_ensemble(args.ensemble, {"grid64": synthetic.resolve_data_dir(),
                                              "native": config.native_data_dir()},
                              args.dtype)
    print(f"{result['bytes_before'] / 1e6:.1f} MB -> {result['bytes_after'] / 1e6:.1f} MB; "
          f"largest Dice change {result['max_abs_dice_change']:.2e} over {len(result['rows'])} "
          f"out-of-fold predictions")
    return 0


def main(argv=None, prog: str | None = None) -> int:
    """``python -m lungseg_utils.study.compact`` (``lungseg storage``): 0 done, 2 bad input."""
    return run_command(build_parser(prog), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
