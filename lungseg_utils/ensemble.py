"""Cross-validation: K fold members over all cases, and the ensemble they make.

Member i trains on all folds but fold i, so every case is scored once by a model that never
saw it (out of fold); the K members, averaged, are the model the project ships (docs/training.md).
An ensemble folder holds ``manifest.json`` (members, folds, settings, SHA-256 of each model file)
and one run folder per member (``fold_i/``); :func:`lungseg_utils.inference.load_model` loads it."""

from __future__ import annotations

import datetime as _dt
import shutil
import time
from pathlib import Path

import numpy as np

from . import config, dataio, inference, metrics, synthetic, train
from .errors import LungsegInputError


def fold_splits(case_ids, k: int, seed: int = 42, checkpoint: str = "last") -> list[dict]:
    """K seeded folds as splits ``{"seed", "train", "val", "test"}``, one per member: ``test``
    is fold i; ``val`` the same cases (``checkpoint="last"``: logged only) or else one seeded
    case of the other folds, taken out of ``train`` to choose the checkpoint."""
    ids = sorted(case_ids)
    held = 0 if checkpoint == "last" else 1          # cases of the rest kept for choosing
    if not 2 <= k <= len(ids) or len(ids) - -(-len(ids) // k) - held < 1:
        raise LungsegInputError(f"fold_splits: k={k} needs 2 <= k <= {len(ids)} folds, each "
                                f"leaving a case to train on, for {len(ids)} cases.")
    rng = np.random.default_rng(seed)
    order = [ids[i] for i in rng.permutation(len(ids))]
    splits = []
    for i in range(k):
        test = sorted(order[i::k])
        rest = [c for c in ids if c not in test]
        val = test if checkpoint == "last" else [rest[int(rng.integers(len(rest)))]]
        splits.append({"seed": seed, "train": [c for c in rest if c not in val], "val": val,
                       "test": test})
    return splits


def write_manifest(folder, run_dirs, fold_seed: int, overwrite: bool = False) -> Path:
    """``folder/manifest.json`` for member runs (paths, inside ``folder``, in fold order)."""
    folder = Path(folder)
    members, settings = [], None
    for i, run in enumerate(map(Path, run_dirs)):
        cfg = dataio.load_json(run / "train_config.json")
        split = dataio.load_json(run / "split.json")
        model = run / inference.MODEL_FILE
        if not model.resolve().is_relative_to(folder.resolve()):
            raise LungsegInputError(f"{model}: a member must lie inside the ensemble folder "
                                    f"{folder}.")
        settings = settings or cfg["settings"]
        members.append({"file": model.resolve().relative_to(folder.resolve()).as_posix(), "fold": i,
                        "seed": cfg["settings"]["seed"], "train": split["train"],
                        "test": split["test"], "sha256": dataio.file_sha256(model),
                        "bytes": model.stat().st_size})
    manifest = {"kind": "ensemble", "created": _dt.datetime.now().isoformat(timespec="seconds"),
                "folds": len(members), "fold_seed": fold_seed,
                "profile": settings and settings.get("profile"), "settings": settings,
                "members": members}
    return dataio.save_json(manifest, folder / inference.MANIFEST, overwrite=overwrite)


def train_members(splits, data_dir, out_root, profile=None, verbose=0, trainer=None,
                  **overrides) -> list[Path]:
    """The cross-validation loop: for each fold's split, train one member with ``trainer``
    (default :func:`lungseg_utils.train.train`: from random weights) into ``out_root/fold_i``."""
    trainer = trainer or train.train
    runs = []
    for i, split in enumerate(splits):
        runs.append(trainer(data_dir, out_dir=Path(out_root) / f"fold_{i}", profile=profile,
                            split=split, verbose=verbose, **overrides))
    return runs


def score_members(runs, data_dir) -> list[dict]:
    """Each member's unseen cases (its split's ``test``) segmented on the 64^3 grid and
    scored: ``[{"case_id", "fold", "run", metrics...}]`` sorted by case."""
    rows = []
    for i, run_dir in enumerate(runs):
        forward = inference.compiled_forward(inference.load_model(run_dir))
        for cid in dataio.load_json(Path(run_dir) / "split.json")["test"]:
            case = dataio.load_case(Path(data_dir) / cid)
            res = inference.predict_volume(forward, case.ct_hu, case.affine)
            rows.append({"case_id": cid, "fold": i, "run": Path(run_dir).name,
                         **metrics.evaluate_masks(res["mask"], case.mask, case.spacing_mm)})
    return sorted(rows, key=lambda r: r["case_id"])


def cross_validate(k: int = 5, data_dir=None, out_dir=None, profile=None, seed: int = 42,
                   verbose=0, trainer=None, splits=None, **overrides) -> dict:
    """Train the K members of one configuration (:func:`train_members`, into
    ``out_dir/fold_i/``, default ``results/cv/``) on :func:`fold_splits` (``seed``: the folds'
    and, unless overridden, the training's) or on ``splits`` (a member each). Writes
    ``manifest.json`` and returns ``cross_validation.json``: ``{"folds", "profile", "settings",
    "cases": score_members(...), "summary"}``, each case scored by the member that never saw it."""
    data_dir = Path(data_dir) if data_dir else synthetic.resolve_data_dir()
    out_root = Path(out_dir) if out_dir else config.RESULTS_DIR / "cv"
    settings = config.get_profile(profile, **overrides)
    ids = [p.name for p in dataio.discover_cases(data_dir)][: settings.get("max_cases") or None]
    splits = splits or fold_splits(ids, k, seed, settings["checkpoint"])
    runs = train_members(splits, data_dir, out_root, profile, verbose, trainer,
                         **{"seed": seed, **overrides})
    write_manifest(out_root, runs, seed, overwrite=True)
    rows = score_members(runs, data_dir)
    used = dataio.load_json(runs[0] / "train_config.json")["settings"]
    result = {"folds": len(runs), "profile": used.get("profile"), "settings": used, "cases": rows,
              "summary": {m: metrics.summarise(rows, m) for m in metrics.METRICS}}
    dataio.save_json(result, out_root / "cross_validation.json", overwrite=True)
    return result


def member_runs(ensemble_dir) -> list[Path]:
    """The run folder of each member of an ensemble folder, in the manifest's order."""
    folder = Path(ensemble_dir)
    manifest = dataio.load_json(folder / inference.MANIFEST)
    return [(folder / m["file"]).parent for m in manifest["members"]]


def train_main(run_dir=None, data_dir=None, profile=None, verbose=0, **overrides) -> dict:
    """What notebook 04 trains, into ``run_dir`` (default
    :func:`~lungseg_utils.config.active_run_dir`): the profile's ``folds`` members in ``cv/``
    (:func:`cross_validate`) and, at the top, the layout of ``results/reference/``: member 0's
    run files but its models, ``cross_validation.json`` and the members' ``manifest.json``.
    A folder with ``manifest.json`` is not trained again (``"trained": False``), one with
    other files is refused. Returns ``{"run_dir", "trained", "manifest", "wall_s"}``."""
    run_dir = Path(run_dir) if run_dir else config.active_run_dir()
    if (run_dir / inference.MANIFEST).exists():
        return {"run_dir": run_dir, "trained": False, "wall_s": 0.0,
                "manifest": dataio.load_json(run_dir / inference.MANIFEST)}
    if run_dir.exists() and any(run_dir.iterdir()):
        raise LungsegInputError(f"{run_dir}: holds files but no {inference.MANIFEST}; train "
                                "into a new folder (nothing is overwritten).")
    settings = config.get_profile(profile, **overrides)
    t0 = time.perf_counter()
    for key in ("folds", "seed"):   # both are arguments of cross_validate, from the settings
        overrides.pop(key, None)
    cv = cross_validate(int(settings["folds"]), data_dir, run_dir / "cv", profile,
                        seed=int(settings["seed"]), verbose=verbose, **overrides)
    members = member_runs(run_dir / "cv")
    for name in train.RUN_ARTIFACTS:
        if not name.endswith(".keras") and (members[0] / name).exists():
            with dataio.atomic_write(run_dir / name, overwrite=True) as tmp:
                shutil.copyfile(members[0] / name, tmp)
    dataio.save_json(cv, run_dir / "cross_validation.json")
    manifest = write_manifest(run_dir, members, int(settings["seed"]))
    return {"run_dir": run_dir, "trained": True, "wall_s": time.perf_counter() - t0,
            "manifest": dataio.load_json(manifest)}
