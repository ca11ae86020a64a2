"""The robustness suite: controlled shifts of the scans at hand, scored out of fold.

An independent test set showed that a model can score well on its own cross-validation and
fail on scans stored, framed or calibrated differently. This suite is the project's stand-in
for unseen hospitals: each native scan is changed in one controlled way, segmented by the
models that never saw it and by the classical baseline, and scored on the changed scan's own
grid against its reference mask changed the same way.

The shifts (:data:`SHIFTS`): the native scan as stored (image-centred framing, not the course
data's label-centred one); the model cube moved 2 cm along each body axis; the scan cropped
tightly to the lungs along the head-foot axis; HU offset by ±50 and scaled by 0.9 / 1.1;
Gaussian noise of 25 HU; a blur (a softer kernel); other axis orders (R,A,S and a permuted
one); slices twice as thick.

``python -m lungseg_utils.study.robustness --ensemble DIR [--ensemble DIR2] --out FILE`` runs it
(``make robustness``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from .. import anatomy, config, experiments, geometry, inference, dataio, metrics, preprocess
from ..scan import outputs, quality
from ..errors import LungsegInputError
from ..runs.command import run_command

#: name -> one line on what it changes.
SHIFTS = {
    "as stored": "the native scan, framed from the image",
    "frame L+2cm": "model cube moved 2 cm to the patient's left",
    "frame R+2cm": "model cube moved 2 cm to the patient's right",
    "frame A+2cm": "model cube moved 2 cm anterior",
    "frame P+2cm": "model cube moved 2 cm posterior",
    "frame S+2cm": "model cube moved 2 cm superior (toward the head)",
    "frame I+2cm": "model cube moved 2 cm inferior",
    "z-crop": "scan cropped to the lungs' head-foot extent plus 1 cm",
    "HU +50": "every HU value + 50",
    "HU -50": "every HU value - 50",
    "HU x0.9": "HU scaled by 0.9",
    "HU x1.1": "HU scaled by 1.1",
    "noise 25 HU": "Gaussian noise, sigma 25 HU",
    "blur": "Gaussian blur, sigma 1.5 mm",
    "RAS order": "the same voxels stored in R,A,S axis order",
    "SLA order": "the same voxels stored in S,L,A axis order",
    "thick slices": "slices twice as thick (averaged in pairs)",
}
#: Directions in nibabel's world (R,A,S+: +x toward the patient's Right).
_DIRECTION = {"L": (-1, 0, 0), "R": (1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1),
              "I": (0, 0, -1)}


def reorient(volume: np.ndarray, affine: np.ndarray, axcodes) -> tuple[np.ndarray, np.ndarray]:
    """Reorder and flip the axes of ``volume`` to ``axcodes`` (e.g. ``"RAS"``, ``"SLA"``).

    Returns the reoriented array and the affine that keeps every voxel at the same world point.
    """
    ornt = nib.orientations.io_orientation(affine)
    tx = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt(tuple(axcodes)))
    out = nib.orientations.apply_orientation(volume, tx)
    return np.ascontiguousarray(out), affine @ nib.orientations.inv_ornt_aff(tx, volume.shape)


def shifted(case, name: str, seed: int = 0):
    """One shift of a labelled :class:`~lungseg_utils.dataio.Case`.

    Returns ``(ct_hu, mask, affine, centre_mm)``: the changed scan and reference, and the
    cube's centre (world mm) for the framing shifts (None: estimated from the image).
    """
    ct, mask, aff = case.ct_hu, case.mask, case.affine
    if name == "as stored":
        return ct, mask, aff, None
    if name.startswith("frame "):
        d = np.array(_DIRECTION[name[6]], float)
        return ct, mask, aff, geometry.lung_centre_mm(ct, aff) + 20.0 * d
    if name == "z-crop":
        ax = geometry.axial_axis(aff)
        zs = np.flatnonzero(mask.any(axis=tuple(i for i in range(3) if i != ax)))
        pad = int(np.ceil(10.0 / case.spacing_mm[ax]))
        lo, hi = max(zs[0] - pad, 0), min(zs[-1] + 1 + pad, ct.shape[ax])
        cut = [slice(None)] * 3
        cut[ax] = slice(lo, hi)
        shift = np.eye(4)
        shift[ax, 3] = lo
        return ct[tuple(cut)], mask[tuple(cut)], aff @ shift, None
    if name.startswith("HU "):
        op = name[3:]
        out = ct * float(op[1:]) if op[0] == "x" else ct + float(op)
        return out.astype(np.float32), mask, aff, None
    if name == "noise 25 HU":
        rng = np.random.default_rng(seed)
        return (ct + rng.normal(0, 25.0, ct.shape)).astype(np.float32), mask, aff, None
    if name == "blur":
        sigma = 1.5 / np.asarray(case.spacing_mm)
        return ndi.gaussian_filter(ct, sigma).astype(np.float32), mask, aff, None
    if name.endswith(" order"):
        codes = name.split()[0]
        ct2, aff2 = reorient(ct, aff, codes)
        return ct2, reorient(mask, aff, codes)[0], aff2, None
    if name == "thick slices":
        ax = geometry.axial_axis(aff)
        n = ct.shape[ax] // 2 * 2
        take = [slice(None)] * 3
        take[ax] = slice(0, n)
        c = np.moveaxis(ct[tuple(take)], ax, -1)
        m = np.moveaxis(mask[tuple(take)], ax, -1)
        c = np.moveaxis(0.5 * (c[..., 0::2] + c[..., 1::2]), -1, ax)
        m = np.moveaxis(m[..., 0::2], -1, ax)       # the reference at the first slice of a pair
        scale = np.eye(4)
        scale[ax, ax] = 2.0
        scale[ax, 3] = 0.0
        return c.astype(np.float32), m, aff @ scale, None
    raise LungsegInputError(f"robustness: unknown shift {name!r}; choose from {list(SHIFTS)}.")


def out_of_fold_members(ensemble_dirs, case_id: str) -> list[Path]:
    """The member files, over the given ensemble folders, whose training never saw ``case_id``."""
    found = []
    for folder in ensemble_dirs:
        manifest = dataio.load_json(Path(folder) / inference.MANIFEST)
        found += [Path(folder) / m["file"] for m in manifest["members"]
                  if case_id in m.get("test", [])]
    return found


def score_case(case, forwards: dict, shifts=tuple(SHIFTS), seed: int = 0,
               flagged: str | None = None) -> list[dict]:
    """Dice of each method (``forwards``: name -> compiled forward with ``members=True``;
    plus ``baseline``, the classical method) on each shift of one native case, and what the
    quality flag sees: each method's agreement with the baseline (``<method>_vs_baseline``)
    and, for the method named ``flagged`` (the inference command's ensemble), its members'
    agreement and the whole :func:`lungseg_utils.scan.quality.scan_summary` flag
    (``<flagged>_members``, ``<flagged>_flag``). Returns one row per shift.

    Each shifted scan is taken to the model grid once for all networks; the baseline, which
    does not see the model grid, is computed once for the scan as stored and reused for the
    framing shifts."""
    rows, stored_base = [], None
    for name in shifts:
        ct, mask, aff, centre = shifted(case, name, seed)
        ct64, grid = geometry.to_model_grid(ct, aff, centre)
        x64 = preprocess.window_normalise(ct64)
        if name.startswith("frame ") and stored_base is not None:
            base = stored_base                  # the same scan: the same baseline mask
        else:
            base = quality.baseline_mask(ct, aff)
            stored_base = base if name == "as stored" else stored_base
        row = {"case_id": case.case_id, "shift": name}
        body = anatomy.body_mask(ct, axis=geometry.axial_axis(aff))        # once for all methods
        for method, forward in forwards.items():
            prob64, _, members64 = inference.predict_prob64(forward, x64, return_members=True)
            pred = inference.masks_from_prob64(prob64, grid, ct, body=body)["mask"]
            row[method] = metrics.dice(pred, mask)
            row[f"{method}_vs_baseline"] = metrics.dice(pred, base)
            if method == flagged:
                summary = quality.scan_summary(pred, ct, aff, members64=members64, baseline=base)
                row[f"{method}_members"] = summary["members_agreement"]
                row[f"{method}_flag"] = summary["quality"]["flag"]
        row["baseline"] = metrics.dice(base, mask)
        rows.append(row)
    return rows


def flag_power(rows: list[dict], method: str, dice_below: float = 0.97) -> dict:
    """How well what the quality flag looks at finds ``method``'s worst predictions.

    For each score (agreement with the baseline; the members' agreement and the flag itself
    where recorded): Spearman's rank correlation with Dice over all rows, and the area under
    the ROC curve for finding the rows with Dice below ``dice_below`` (low agreement = more
    suspect; 0.5 = chance). The flag's own sensitivity and specificity at that Dice.
    Returns ``{"n", "n_below", "dice_below", "scores": {name: {"spearman", "auc"}}, "flag"}``.
    """
    from scipy.stats import spearmanr

    dice = np.array([r[method] for r in rows], float)
    low = dice < dice_below
    out = {"n": len(rows), "n_below": int(low.sum()), "dice_below": dice_below, "scores": {}}
    names = {"vs_baseline": f"{method}_vs_baseline", "members": f"{method}_members"}
    for label, key in names.items():
        if not rows or rows[0].get(key) is None:
            continue
        score = np.array([r[key] for r in rows], float)
        rho = spearmanr(score, dice).statistic if len(rows) > 2 else float("nan")
        out["scores"][label] = {"spearman": float(rho),
                                "auc": metrics.roc_auc(-score, low)}
    if rows and f"{method}_flag" in rows[0]:
        flag = np.array([r[f"{method}_flag"] == "check" for r in rows])
        out["flag"] = {"flagged": int(flag.sum()),
                       "sensitivity": float(flag[low].mean()) if low.any() else float("nan"),
                       "specificity": float((~flag[~low]).mean()) if (~low).any() else float("nan")}
    return out


#: The methods of a robustness row scored out of fold (each by members that never saw the case).
OUT_OF_FOLD = ("member", "member_2", "member_3", "ensemble_oof")


def choose_flag_threshold(rows: list[dict], methods=OUT_OF_FOLD, dice_below: float = 0.97,
                          max_false_alarm: float = 0.10, step: float = 0.0025) -> dict:
    """The quality flag's threshold on the agreement with the classical baseline, chosen on
    out-of-fold predictions: the highest multiple of ``step`` that flags at most
    ``max_false_alarm`` of the predictions with Dice >= ``dice_below`` (so it catches as many
    below as it can). Returns ``{"threshold", "n", "n_below", "caught", "false_alarms",
    "sensitivity", "specificity"}`` (counts over every (row, method) pair)."""
    pairs = [(r[m], r[f"{m}_vs_baseline"]) for r in rows for m in methods if m in r]
    if not pairs:
        raise LungsegInputError("choose_flag_threshold: no out-of-fold predictions in the rows.")
    dice, score = np.array(pairs, float).T
    low = dice < dice_below
    best = None
    for t in np.round(np.arange(0.5, 1.0, step), 6):
        if (score[~low] < t).mean() <= max_false_alarm:
            best = float(t)
    flagged = score < best
    return {"threshold": best, "n": int(len(dice)), "n_below": int(low.sum()),
            "caught": int((flagged & low).sum()), "false_alarms": int((flagged & ~low).sum()),
            "sensitivity": float(flagged[low].mean()) if low.any() else float("nan"),
            "specificity": float((~flagged[~low]).mean())}


def summarise(rows: list[dict], methods) -> dict:
    """``{shift: {method: {"mean", "worst_value", "worst_case_id", "n"}}}`` over cases."""
    out = {}
    for name in dict.fromkeys(r["shift"] for r in rows):
        sub = [r for r in rows if r["shift"] == name]
        out[name] = {}
        for m in methods:
            s = metrics.summarise([{"case_id": r["case_id"], "dice": r[m]} for r in sub], "dice")
            out[name][m] = {k: s[k] for k in ("n", "mean", "worst_value", "worst_case_id")}
    return out


def run_suite(ensemble_dirs, native_dir=None, max_cases=None, shifts=tuple(SHIFTS),
              log=print) -> dict:
    """Score every native case under every shift.

    Methods: ``member`` (the first listed ensemble's member that never saw the case: out
    of fold), ``ensemble_oof`` (the average of every member, over all listed ensembles, that
    never saw the case; only with several ensembles, e.g. two repeats of the
    cross-validation), ``member_2``, ``member_3`` ... (the unseen member of the second,
    third ... listed ensemble, to compare ensembles member for member), ``ensemble_all`` (all members of the first ensemble, as the
    inference command uses them: K - 1 of K members trained on the case, so this column is
    optimistic) and ``baseline`` (the classical method). Returns ``{"shifts", "methods",
    "rows", "summary", "flag_power", "ensembles", "seconds"}``; ``flag_power`` is
    :func:`flag_power` for each network method (for ``member`` the honest, out-of-fold one;
    the members' agreement and the flag are those of ``ensemble_all``, whose members
    mostly saw the case).
    """
    t0 = time.perf_counter()
    native_dir = Path(native_dir) if native_dir else config.native_data_dir()
    if native_dir is None:
        raise LungsegInputError("robustness: no native scans found (../shared/data/lctsc_native).")
    cases = dataio.discover_cases(native_dir)[:max_cases]
    cache, rows, methods = {}, [], None
    load = lambda p: cache.setdefault(Path(p), inference.load_model(p))  # noqa: E731
    everyone = inference.compiled_forward(load(ensemble_dirs[0]), members=True)
    for folder in cases:
        case = dataio.load_case(folder)
        oof = [out_of_fold_members([d], case.case_id) for d in ensemble_dirs]
        for folder_i, group in zip(ensemble_dirs, oof):
            if not group:
                raise LungsegInputError(f"{folder_i}: no member left {case.case_id} out.")
        every = [f for group in oof for f in group]
        forwards = {"member": inference.compiled_forward(load(oof[0][0]), members=True)}
        for i, group in enumerate(oof[1:], start=2):       # the other ensembles' members
            forwards[f"member_{i}"] = inference.compiled_forward(load(group[0]), members=True)
        if len(ensemble_dirs) > 1:
            forwards["ensemble_oof"] = inference.compiled_forward(
                inference.Ensemble([load(f) for f in every]), members=True)
        forwards["ensemble_all"] = everyone
        rows += score_case(case, forwards, shifts, flagged="ensemble_all")
        methods = (*forwards, "baseline")
        log(f"{case.case_id}: " + ", ".join(
            f"{r['shift']} " + "/".join(f"{r[m]:.3f}" for m in methods)
            for r in rows[-len(shifts):]))
    return {"run": experiments.run_identity(ensemble_dirs[0]),
            "shifts": {k: SHIFTS[k] for k in shifts}, "methods": list(methods), "rows": rows,
            "summary": summarise(rows, methods),
            "flag_power": {m: flag_power(rows, m) for m in methods if m != "baseline"},
            "ensembles": [str(Path(d)) for d in ensemble_dirs],
            "seconds": round(time.perf_counter() - t0, 1)}


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog or "python -m lungseg_utils.study.robustness",
                                description="The robustness suite: controlled shifts of the "
                                            "native scans, scored out of fold.")
    p.add_argument("--ensemble", action="append", required=True,
                   help="an ensemble folder with manifest.json (repeat for more)")
    p.add_argument("--out", required=True, help="the JSON file to write")
    p.add_argument("--max_cases", type=int, help="only the first N native scans")
    p.add_argument("--overwrite", action="store_true")
    return p


def run(args) -> int:
    """The robustness suite on parsed ``args`` (:func:`build_parser`); bad input raises."""
    outputs.check_output_paths([(args.out, "--out", (".json",))], overwrite=args.overwrite)
    result = run_suite(args.ensemble, max_cases=args.max_cases)
    dataio.save_json(result, args.out, overwrite=args.overwrite)
    for name, s in result["summary"].items():
        print(f"{name:>14}: " + "  ".join(f"{m} {v['mean']:.4f} (worst {v['worst_value']:.4f})"
                                          for m, v in s.items()))
    return 0


def main(argv=None, prog: str | None = None) -> int:
    """``python -m lungseg_utils.study.robustness`` (``lungseg robustness``): 0 done, 2 bad input."""
    return run_command(build_parser(prog), run, argv)


if __name__ == "__main__":
    sys.exit(main())
