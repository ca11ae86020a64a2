"""Cross-validation and the reference ensemble: K fold models over all cases.

As nnU-Net does by default, the cases are split into K seeded folds; member i trains on the
other folds, so every case is scored once by a model that never saw it (out of fold), and
the K members, averaged, are the model the project ships. With the ``ensemble`` profile a
member keeps its last weights (``checkpoint="last"``): its fold's cases are its validation
data only to be logged, never to choose anything. With ``checkpoint="best"`` (the older
profiles) one case of the other folds is held out for choosing the checkpoint.

An ensemble folder holds ``manifest.json`` (members, folds, settings, SHA-256 of each model
file) and one run folder per member (``fold_i/``, as :func:`lungseg_utils.train.train` writes
it); :func:`lungseg_utils.inference.load_model` loads such a folder.

Command line::

    python -m lungseg_utils.ensemble --k 5 --profile ensemble [--publish results/reference]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from . import config, experiments, inference, io, metrics, synthetic, train
from .errors import LungsegInputError


def fold_splits(case_ids, k: int, seed: int = 42, checkpoint: str = "last") -> list[dict]:
    """K seeded folds as splits ``{"seed", "train", "val", "test"}``, one per member.

    ``test`` is fold i; with ``checkpoint="last"`` ``val`` is the same cases (logged only),
    otherwise one seeded case of the other folds, taken out of ``train``.
    """
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


def nested_splits(parent_tests, k: int, seed: int = 42) -> list[tuple[int, dict]]:
    """K folds nested in an ensemble's folds: ``[(parent member, split)]``, one per member.

    ``parent_tests`` is each parent member's unseen cases. Every new fold lies inside one
    parent fold (the k folds are shared out over the parent folds as evenly as their sizes
    allow, the cases of each dealt round a seeded order), so a member that starts from that
    parent's weights and trains on every other case (``val`` = its fold, logged only) has
    still never seen its fold: out of fold, though fine-tuned.
    """
    groups = [sorted(t) for t in parent_tests]
    if not len(groups) <= k <= sum(map(len, groups)):
        raise LungsegInputError(f"nested_splits: k={k} needs {len(groups)} <= k <= "
                                f"{sum(map(len, groups))} (the parent's folds and cases).")
    rng = np.random.default_rng(seed)
    counts = [1] * len(groups)
    for g in [int(i) for i in rng.permutation(len(groups))] * k:
        if sum(counts) < k and counts[g] < len(groups[g]):
            counts[g] += 1
    ids = sorted(c for g in groups for c in g)
    splits = []
    for g, (cases, n) in enumerate(zip(groups, counts)):
        order = [cases[i] for i in rng.permutation(len(cases))]
        for j in range(n):
            test = sorted(order[j::n])
            splits.append((g, {"seed": seed, "train": [c for c in ids if c not in test],
                               "val": test, "test": test}))
    return splits


def write_manifest(folder, run_dirs, fold_seed: int, overwrite: bool = False) -> Path:
    """``folder/manifest.json`` for member runs (paths, inside ``folder``, in fold order)."""
    folder = Path(folder)
    members, settings = [], None
    for i, run in enumerate(run_dirs):
        run = Path(run)
        cfg = io.load_json(run / "train_config.json")
        split = io.load_json(run / "split.json")
        model = run / inference.MODEL_FILE
        if not model.resolve().is_relative_to(folder.resolve()):
            raise LungsegInputError(f"{model}: a member must lie inside the ensemble folder "
                                    f"{folder}.")
        settings = settings or cfg["settings"]
        members.append({"file": model.resolve().relative_to(folder.resolve()).as_posix(), "fold": i,
                        "seed": cfg["settings"]["seed"], "train": split["train"],
                        "test": split["test"], "sha256": io.file_sha256(model),
                        "bytes": model.stat().st_size})
    manifest = {"kind": "ensemble", "created": _dt.datetime.now().isoformat(timespec="seconds"),
                "folds": len(members), "fold_seed": fold_seed,
                "profile": settings and settings.get("profile"), "settings": settings,
                "members": members}
    return io.save_json(manifest, folder / inference.MANIFEST, overwrite=overwrite)


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
            with io.atomic_write(reference_dir / name, overwrite=True) as tmp:
                shutil.copyfile(run_dir / name, tmp)
    io.save_json({"promoted_from": run_dir.name}, reference_dir / "provenance.json",
                 overwrite=True)
    return reference_dir


def publish(ensemble_dir, dest=None, overwrite: bool = False) -> Path:
    """Copy an ensemble (its manifest and each member's run artifacts, one model file each)
    to ``dest`` (default ``results/reference``). Refuses to replace a model unless
    ``overwrite``; files of a former reference that the new one does not have are left."""
    src, dest = Path(ensemble_dir), Path(dest or config.REFERENCE_DIR)
    manifest = io.load_json(src / inference.MANIFEST)
    if (dest / inference.MANIFEST).exists() and not overwrite:
        raise LungsegInputError(f"{dest}: holds an ensemble; pass overwrite=True to replace it.")
    members = []
    for m in manifest["members"]:
        run = (src / m["file"]).parent
        target = dest / f"fold_{m['fold']}"
        for name in train.RUN_ARTIFACTS:
            if name != "final_model.keras" and (run / name).exists():
                with io.atomic_write(target / name, overwrite=True) as tmp:
                    shutil.copyfile(run / name, tmp)
        members.append({**m, "file": f"fold_{m['fold']}/{Path(m['file']).name}"})
    io.save_json({**manifest, "members": members, "published_from": str(src)},
                 dest / inference.MANIFEST, overwrite=True)
    return dest


def cross_validate(k: int = 5, data_dir=None, out_dir=None, profile=None, seed: int = 42,
                   verbose=0, publish_dir=None, init_from=None, nested: bool = False,
                   **overrides) -> dict:
    """Train the K members of one configuration and score every case out of fold.

    Each member is a normal run folder under ``out_dir/fold_i/`` (default
    ``results/cv/``), trained on the other folds (:func:`fold_splits`; ``seed`` is the
    fold assignment's and, unless overridden, the training's). ``out_dir`` then holds
    ``manifest.json`` (an ensemble :func:`lungseg_utils.inference.load_model` can load) and
    ``cross_validation.json``: ``{"folds", "profile", "settings", "cases": [{"case_id",
    "fold", metrics...}], "summary": {metric: summary}}``, each case scored on the 64^3 grid
    by the member that never saw it. With ``publish_dir`` the ensemble is also copied there
    (:func:`publish`). With ``init_from`` (an ensemble folder of ``k`` members) member i is
    fine-tuned: it starts from that ensemble's member i, on the same split; with ``nested``
    as well, the K folds are :func:`nested_splits` of that ensemble's folds, each member
    starting from the member whose unseen cases hold its fold (so any K, e.g. to measure K).
    """
    data_dir = Path(data_dir) if data_dir else synthetic.resolve_data_dir()
    out_root = Path(out_dir) if out_dir else config.RESULTS_DIR / "cv"
    settings = config.get_profile(profile, **overrides)
    ids = [p.name for p in io.discover_cases(data_dir)][: settings.get("max_cases") or None]
    rows, runs = [], []
    inits = member_runs(init_from) if init_from else None
    if nested and inits:
        pairs = nested_splits([io.load_json(r / "split.json")["test"] for r in inits], k, seed)
        inits, splits = [inits[g] for g, _ in pairs], [split for _, split in pairs]
    elif inits:
        if len(inits) != k:
            raise LungsegInputError(f"{init_from}: has {len(inits)} members, not k={k}.")
        splits = [io.load_json(r / "split.json") for r in inits]
    else:
        splits = fold_splits(ids, k, seed, settings["checkpoint"])
    for i, split in enumerate(splits):
        run_dir = train.train(data_dir, out_dir=out_root / f"fold_{i}", profile=profile,
                              split=split, verbose=verbose,
                              init_weights=inits[i] / inference.MODEL_FILE if inits else None,
                              **{"seed": seed, **overrides})
        runs.append(run_dir)
        forward = inference.compiled_forward(inference.load_model(run_dir))
        for cid in split["test"]:
            case = io.load_case(data_dir / cid)
            res = inference.predict_volume(forward, case.ct_hu, case.affine)
            rows.append({"case_id": cid, "fold": i, "run": run_dir.name,
                         **metrics.evaluate_masks(res["mask"], case.mask, case.spacing_mm)})
    write_manifest(out_root, runs, seed, overwrite=True)
    rows.sort(key=lambda r: r["case_id"])
    used = io.load_json(runs[0] / "train_config.json")["settings"]
    result = {"folds": k, "profile": used.get("profile"), "settings": used, "cases": rows,
              "summary": {m: metrics.summarise(rows, m) for m in
                          ("dice", "iou", "hd95_mm", "assd_mm", "volume_error_pct")}}
    io.save_json(result, out_root / "cross_validation.json", overwrite=True)
    if publish_dir:
        publish(out_root, publish_dir, overwrite=True)
        io.save_json(result, Path(publish_dir) / "cross_validation.json", overwrite=True)
    return result


def member_runs(ensemble_dir) -> list[Path]:
    """The run folder of each member of an ensemble folder, in the manifest's order."""
    folder = Path(ensemble_dir)
    manifest = io.load_json(folder / inference.MANIFEST)
    return [(folder / m["file"]).parent for m in manifest["members"]]


def train_main(run_dir=None, data_dir=None, profile=None, verbose=0, **overrides) -> dict:
    """What notebook 04 trains: the reference's kind of model, into ``run_dir``.

    ``run_dir`` (default :func:`lungseg_utils.config.active_run_dir`) then has the layout of
    ``results/reference/``: ``cv/fold_i/`` the profile's ``folds`` cross-validation members
    (:func:`cross_validate`; each within the profile's ``budget_min``), ``manifest.json``
    listing them (the ensemble the inference command averages), ``cross_validation.json``,
    and, at the top, the run artifacts of member 0 but its model (``split.json``,
    ``training_log.csv`` ...: the single model whose held-out split notebook 05 and the
    report describe first). A folder that already holds ``manifest.json`` is trained no
    further: ``{"trained": False}``. A folder with other files is refused (nothing is
    overwritten). ``overrides`` replace single settings of the profile (as in
    :func:`cross_validate`). Returns ``{"run_dir", "trained", "manifest", "wall_s"}``.
    """
    run_dir = Path(run_dir) if run_dir else config.active_run_dir()
    if (run_dir / inference.MANIFEST).exists():
        return {"run_dir": run_dir, "trained": False, "wall_s": 0.0,
                "manifest": io.load_json(run_dir / inference.MANIFEST)}
    if run_dir.exists() and any(run_dir.iterdir()):
        raise LungsegInputError(f"{run_dir}: holds files but no {inference.MANIFEST}; train "
                                "into a new folder (nothing is overwritten).")
    settings = config.get_profile(profile, **overrides)
    t0 = time.perf_counter()
    overrides.pop("folds", None)
    cross_validate(int(settings["folds"]), data_dir, run_dir / "cv", profile,
                   seed=int(settings["seed"]), verbose=verbose, **overrides)
    assemble_main(run_dir)
    return {"run_dir": run_dir, "trained": True, "wall_s": time.perf_counter() - t0,
            "manifest": io.load_json(run_dir / inference.MANIFEST)}


def assemble_main(run_dir) -> Path:
    """Give a finished cross-validation in ``run_dir/cv`` (:func:`cross_validate`) the layout
    of ``results/reference/``: member 0's run artifacts but its model files (the members
    under ``cv/`` hold them; no file is committed twice), ``cross_validation.json`` and a
    ``manifest.json`` of the members at the top. Returns the manifest's path."""
    run_dir = Path(run_dir)
    cv = io.load_json(run_dir / "cv" / inference.MANIFEST)
    members = member_runs(run_dir / "cv")
    promote_run(members[0], run_dir, models=False)
    io.save_json(io.load_json(run_dir / "cv" / "cross_validation.json"),
                 run_dir / "cross_validation.json")
    return write_manifest(run_dir, members, int(cv["fold_seed"]))


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
            with io.atomic_write(dest / path.relative_to(src), overwrite=True) as tmp:
                shutil.copyfile(path, tmp)
    io.save_json({"promoted_from": src.name}, dest / "provenance.json", overwrite=True)
    return dest


def train_seeds(ensemble_dir, seeds, fold: int = 0, data_dir=None, out_dir=None,
                verbose=0) -> dict:
    """Train member ``fold`` of an ensemble again with other training seeds: the same cases,
    split and settings (and, for a fine-tuned member, the same starting weights), only the
    seed of the weights, the augmentation and the sample order differ. How far one training run can be trusted is the spread of these runs' Dice on the
    fold's (unseen) test cases (:func:`lungseg_utils.experiments.seed_spread`).

    The new runs go to ``out_dir`` (default ``ensemble_dir/seeds``)``/seed_S/``; the
    member itself is the run of its own seed. Returns ``{seed: run folder}``, sorted.
    """
    folder = Path(ensemble_dir)
    member = io.load_json(folder / inference.MANIFEST)["members"][fold]
    run = (folder / member["file"]).parent
    cfg = io.load_json(run / "train_config.json")
    settings = {k: v for k, v in cfg["settings"].items() if k != "profile"}
    data_dir = Path(data_dir) if data_dir else config.REPO_ROOT / cfg["data_dir"]
    init = _initial_weights(cfg, run)
    runs = {int(member["seed"]): run}
    for seed in seeds:
        if int(seed) not in runs:
            runs[int(seed)] = train.train(
                data_dir, out_dir=Path(out_dir or folder / "seeds") / f"seed_{seed}",
                profile=cfg["settings"]["profile"], split=run / "split.json", verbose=verbose,
                init_weights=init, **{**settings, "seed": int(seed)})
    return dict(sorted(runs.items()))


def _initial_weights(cfg: dict, run: Path) -> Path | None:
    """The weights a fine-tuned member started from (its ``train_config.json``'s
    ``init_weights``), checked against the recorded sha256, so that its seed runs repeat the
    fine-tuning and not a training from scratch; None for a member trained from scratch."""
    init = cfg.get("init_weights")
    if not init:
        return None
    path = Path(init["file"])
    path = path if path.is_absolute() else config.REPO_ROOT / path
    if not path.is_file():
        raise LungsegInputError(f"{run}: was fine-tuned from {init['file']}, which is missing; "
                                "restore it (git history) to retrain this member with other seeds.")
    if io.file_sha256(path) != init["sha256"]:
        raise LungsegInputError(f"{path}: is not the file {run} was fine-tuned from (sha256 differs).")
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lungseg_utils.ensemble",
        description="K-fold cross-validation of one training configuration: K members, each "
                    "case scored by the member that never saw it; the members together are "
                    "an ensemble (manifest.json) that the inference command can use.")
    p.add_argument("--k", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--profile", choices=sorted(config.PROFILES),
                   help="training settings (default: $LUNGSEG_PROFILE or quick)")
    p.add_argument("--data_dir", help="folder of patient_XXX/{ct,lung}.nii.gz")
    p.add_argument("--out_dir", help="where the member runs go (default results/cv)")
    p.add_argument("--publish", metavar="DIR",
                   help="also copy the ensemble to DIR (e.g. results/reference)")
    p.add_argument("--seed", type=int, default=42, help="seed of the folds and the training")
    p.add_argument("--init_from", metavar="DIR",
                   help="fine-tune: member i starts from member i of the ensemble DIR, same split")
    p.add_argument("--nested", action="store_true",
                   help="with --init_from: K folds inside DIR's folds, each member fine-tuned "
                        "from the DIR member that never saw its fold, on all other cases")
    p.add_argument("--seeds", type=int, nargs="+", metavar="S",
                   help="train nothing new but member --fold of the ensemble --from again with "
                        "these seeds, and write its seed_spread.json")
    p.add_argument("--fold", type=int, default=0, help="the member --seeds retrains (default 0)")
    p.add_argument("--from", dest="source", metavar="DIR", help="the ensemble --seeds reads")
    p.add_argument("--promote", metavar="RUN",
                   help="train nothing: make RUN (a finished make-all run) results/reference")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.promote:
        try:
            print(f"{promote_main(args.promote, overwrite=True)}: now the reference, from {args.promote}")
        except LungsegInputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.seeds:
        return _seeds_main(args)
    try:
        result = cross_validate(args.k, args.data_dir, args.out_dir, args.profile,
                                seed=args.seed, publish_dir=args.publish,
                                **({"init_from": args.init_from, "nested": args.nested}
                                   if args.init_from else {}))
    except LungsegInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    s = result["summary"]["dice"]
    print(f"{args.k}-fold cross-validation: out-of-fold Dice {s['mean']:.4f} ± {s['sd']:.4f}, "
          f"worst {s['worst_value']:.4f} ({s['worst_case_id']})")
    return 0


def _seeds_main(args) -> int:
    try:
        if not args.source:
            raise LungsegInputError("--seeds needs --from DIR, the ensemble whose member to retrain.")
        runs = train_seeds(args.source, args.seeds, args.fold, args.data_dir, args.out_dir)
        manifest = io.load_json(Path(args.source) / inference.MANIFEST)
        test = manifest["members"][args.fold]["test"]
        native = config.native_data_dir()
        folders = {"grid64": Path(args.data_dir) if args.data_dir else synthetic.resolve_data_dir(),
                   "native": native if native and all((native / c).is_dir() for c in test)
                   else None}
        result = experiments.seed_spread(runs, test, folders)
        path = io.save_json({"run": experiments.run_identity(args.source), "fold": args.fold,
                             **result},
                            Path(args.source) / "seed_spread.json", overwrite=True)
    except LungsegInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for row in result["summary"]:
        print(f"{row['case_id']} {row['grid']}: Dice {row['min']:.4f}..{row['max']:.4f} "
              f"over seeds {result['seeds']} (range {row['range']:.4f})")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
