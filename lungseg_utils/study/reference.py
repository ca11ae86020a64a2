"""The committed reference: a finished run made ``results/reference/`` (``lungseg promote``).

``make all`` trains a new run into ``results/models/main_*``; promoting it copies its
manifest, member runs and result files (no ``final_model.keras``, no training backups, no
seed-spread runs) to ``results/reference/``, the inference command's default model.
:func:`publish` copies a bare cross-validation (``lungseg cv``) instead.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from .. import config, dataio, inference, train
from ..errors import LungsegInputError
from ..runs.command import run_command


def copy_file(src, dest) -> Path:
    """Copy one file to ``dest`` through the one atomic writer (replacing it)."""
    with dataio.atomic_write(dest, overwrite=True) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dest)


def promote_run(run_dir, reference_dir=None, overwrite: bool = False,
                include_final: bool = True, models: bool = True) -> Path:
    """Copy a finished run's artifacts to ``results/reference/`` (the default model).

    Refuses to replace an existing reference unless ``overwrite``. Records where the
    reference came from in ``provenance.json``. ``include_final=False`` leaves out
    ``final_model.keras`` (22 MB at base 16) where only the best model is needed;
    ``models=False`` both model files (an ensemble's top, whose members hold them). Returns
    the reference folder.
    """
    run_dir = Path(run_dir)
    reference_dir = Path(reference_dir or config.REFERENCE_DIR)
    missing = [a for a in train.RUN_ARTIFACTS if not (run_dir / a).exists()]
    if missing:
        raise LungsegInputError(f"{run_dir}: not a finished run (missing {', '.join(missing)}).")
    if (reference_dir / "best_model.keras").exists() and not overwrite:
        raise LungsegInputError(f"{reference_dir}: a reference model exists; pass "
                                "overwrite=True to replace it.")
    reference_dir.mkdir(parents=True, exist_ok=True)
    for name in train.RUN_ARTIFACTS:
        if (include_final or name != "final_model.keras") and (models or
                                                                not name.endswith(".keras")):
            copy_file(run_dir / name, reference_dir / name)
    dataio.save_json({"promoted_from": run_dir.name}, reference_dir / "provenance.json",
                 overwrite=True)
    return reference_dir


def publish(ensemble_dir, dest=None, overwrite: bool = False) -> Path:
    """Copy an ensemble (its manifest, its ``cross_validation.json`` and each member's run
    artifacts, one model file each) to ``dest`` (default ``results/reference``). Refuses to replace a model unless
    ``overwrite``; files of a former reference that the new one does not have are left."""
    src, dest = Path(ensemble_dir), Path(dest or config.REFERENCE_DIR)
    manifest = dataio.load_json(src / inference.MANIFEST)
    if (dest / inference.MANIFEST).exists() and not overwrite:
        raise LungsegInputError(f"{dest}: holds an ensemble; pass overwrite=True to replace it.")
    members = []
    for m in manifest["members"]:
        run = (src / m["file"]).parent
        target = dest / f"fold_{m['fold']}"
        for name in train.RUN_ARTIFACTS:
            if name != "final_model.keras" and (run / name).exists():
                copy_file(run / name, target / name)
        members.append({**m, "file": f"fold_{m['fold']}/{Path(m['file']).name}"})
    if (src / "cross_validation.json").exists():
        copy_file(src / "cross_validation.json", dest / "cross_validation.json")
    dataio.save_json({**manifest, "members": members, "published_from": str(src)},
                 dest / inference.MANIFEST, overwrite=True)
    return dest


def promote_main(run_dir, reference_dir=None, overwrite: bool = False) -> Path:
    """Copy a run of :func:`train_main` (its manifest, member runs and result files) to
    ``results/reference/``, which then is the default model. Refuses to replace a reference
    unless ``overwrite``; with it, the old reference's members (``cv/``) are removed first so
    that the manifest and the members agree. ``final_model.keras`` files, training backups
    and the runs of a seed spread (``seeds/``: its ``seed_spread.json`` is kept) are left out."""
    src, dest = Path(run_dir), Path(reference_dir or config.REFERENCE_DIR)
    if not (src / inference.MANIFEST).exists():
        raise LungsegInputError(f"{src}: not a finished run of the main job (no manifest.json).")
    if (dest / inference.MANIFEST).exists() and not overwrite:
        raise LungsegInputError(f"{dest}: holds a reference; pass overwrite=True to replace it.")
    shutil.rmtree(dest / "cv", ignore_errors=True)
    for name in ("best_model.keras", "final_model.keras"):  # an old member 0's, if any
        (dest / name).unlink(missing_ok=True)
    for path in sorted(src.rglob("*")):
        if (path.is_file() and path.name != "final_model.keras"
                and not {"backup", "seeds"} & set(path.relative_to(src).parts)):
            copy_file(path, dest / path.relative_to(src))
    dataio.save_json({"promoted_from": src.name}, dest / "provenance.json", overwrite=True)
    return dest



def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog or "python -m lungseg_utils.study.reference",
        description="Make a finished run the committed reference (results/reference), the "
                    "inference command's default model. It replaces the former one.")
    p.add_argument("run", metavar="RUN", help="a finished make-all run (results/models/main_...)")
    p.add_argument("--to", metavar="DIR", help="where (default results/reference)")
    return p


def run(args) -> int:
    """The promote command on parsed ``args``; bad input raises."""
    dest = promote_main(args.run, args.to, overwrite=True)
    print(f"{dest}: now the reference, from {args.run}")
    return 0


def main(argv=None, prog: str | None = None) -> int:
    """``python -m lungseg_utils.study.reference`` (``lungseg promote``): 0 done, 2 bad input."""
    return run_command(build_parser(prog), run, argv)


if __name__ == "__main__":
    sys.exit(main())
