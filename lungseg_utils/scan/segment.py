"""The inference command: a scan (NIfTI or DICOM) in; masks, a summary and its flag out.

``lungseg segment`` or ``python -m lungseg_utils.inference`` (this module's :func:`main`)
checks every output path first (:mod:`lungseg_utils.scan.outputs`), loads the model once, and for each scan: reads it
(:func:`lungseg_utils.scan.reader.load_scan`), predicts (:func:`lungseg_utils.inference.predict_volume`),
splits right and left (:func:`lungseg_utils.scan.sides.split_left_right`), writes the mask and
probability on the input's grid, and summarises (:func:`lungseg_utils.scan.quality.scan_summary`):
one JSON per scan and, in folder mode, a CSV over all of them. A bad scan is one line on
stderr; in folder mode the others still run.
"""

from __future__ import annotations

import argparse
import contextvars
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

from .. import dataio
from . import outputs, quality, reader
from .sides import UNKNOWN_SIDE, split_left_right
from .dicom import series_choice_line
from ..errors import LungsegInputError
from ..runs.command import run_command
from ..inference import (MANIFEST, REFINE_HU, REFINE_HU_MODEL_GRID, predict_volume,
                         resolve_model_path)
from .openvino_ir import forward_for
from .runtime import exit_now


def _is_dicom_scan(folder: Path) -> bool:
    """A folder (any depth) of DICOM files, and not a folder of NIfTI patient folders."""
    from .dicom import is_dicom_file

    if any((p / dataio.CT_NAME).exists() for p in folder.iterdir() if p.is_dir()):
        return False
    return any(p.is_file() and is_dicom_file(p) for p in folder.rglob("*"))


def _jobs(input_path: Path, output_mask, output_prob, output_dir, output_json=None) -> list[tuple]:
    """(name, scan path, mask out, prob out, summary out) for a file, a patient folder, a
    folder of DICOM files (one scan) or a folder of patients."""
    if not input_path.exists():
        raise LungsegInputError(f"{input_path}: input does not exist.")
    if (input_path.is_file() or (input_path / dataio.CT_NAME).exists()
            or _is_dicom_scan(input_path)):
        if not output_mask:
            raise LungsegInputError(f"{input_path}: a single scan needs --output_mask FILE.")
        scan = input_path / dataio.CT_NAME if (input_path / dataio.CT_NAME).exists() else input_path
        return [(input_path.name, scan, Path(output_mask), Path(output_prob) if output_prob else None,
                 Path(output_json) if output_json else None)]
    if not any((p / dataio.CT_NAME).exists() for p in input_path.iterdir() if p.is_dir()):
        raise LungsegInputError(f"{input_path}: holds no ct.nii.gz, no DICOM files and no "
                                "patient folders with a ct.nii.gz.")
    out = Path(output_dir or output_mask or "")
    if not str(out) or out.suffix in (".gz", ".nii"):
        raise LungsegInputError(f"{input_path}: a folder of patients needs --output_dir FOLDER.")
    cases = dataio.discover_cases(input_path, require_mask=False)
    return [(c.name, c / dataio.CT_NAME, out / c.name / "lung_pred.nii.gz",
             out / c.name / "lung_prob.nii.gz" if output_prob or output_dir else None,
             out / c.name / "lung_summary.json") for c in cases]


def _output_paths(jobs, args) -> list[tuple]:
    """Every file the run will write, as (path, option, suffixes) for outputs.check_output_paths."""
    nifti, found = outputs.NIFTI_SUFFIXES, []
    for _, _, mask, prob, summary in jobs:
        found += [(mask, "--output_mask", nifti), (prob, "--output_prob", nifti),
                  (summary, "--output_json", (".json",))]
    if args.output_dir:
        found.append((Path(args.output_dir) / SUMMARY_CSV, "the summary table", (".csv",)))
    if args.output_seg:
        found.append((Path(args.output_seg), "--output_seg", (".dcm",)))
    return [o for o in found if o[0] is not None]


def _input_files(jobs) -> list[Path]:
    """The files the run reads: each NIfTI file, or each DICOM file of a DICOM folder."""
    from .dicom import dicom_files

    return [f for _, scan, *_ in jobs
            for f in (dicom_files(scan) if Path(scan).is_dir() else [scan])]


SUMMARY_CSV = "lung_summary.csv"
CSV_COLUMNS = ("case", "lung_volume_ml", "right_lung_ml", "left_lung_ml", "right_fraction",
               "members_agreement", "baseline_agreement", "flag", "reasons", "seconds", "mask")


def _model_info(path) -> dict:
    """What the summary says about the model: its path and its (manifest's) sha256."""
    resolved = resolve_model_path(path)
    file = resolved / MANIFEST if resolved.is_dir() else resolved
    return {"path": str(resolved), "sha256": dataio.file_sha256(file),
            "members": len(dataio.load_json(file).get("members", [])) if resolved.is_dir() else 1}


def write_summary_csv(summaries: list[dict], path: Path, overwrite: bool = False) -> Path:
    """One row per scan (:data:`CSV_COLUMNS`) of the folder mode's summaries, written atomically."""
    import csv

    with dataio.atomic_write(path, overwrite=overwrite, suffix=".csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            for s in summaries:
                row = {k: s.get(k) for k in CSV_COLUMNS}
                row["flag"], row["reasons"] = s["quality"]["flag"], "; ".join(s["quality"]["reasons"])
                writer.writerow(row)
    return path


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog or "python -m lungseg_utils.inference",
        description="Segment both lungs in chest CT with a trained lungseg 3D U-Net. Any scan "
                    "works (any size, voxel spacing, orientation): it is taken to the 64^3 "
                    "model grid centred from the image, predicted, and the probability is "
                    "brought back to the input's own grid, so the written masks have exactly "
                    "the input's shape and affine.",
        epilog="Exit status: 0 all scans done; 1 some scans of a folder failed; 2 bad input.")
    p.add_argument("--model", default=None,
                   help="a .keras file, an ensemble folder (with manifest.json) or a run folder "
                        "holding best_model.keras (default: results/reference)")
    p.add_argument("--runtime", choices=("auto", "tensorflow", "openvino"), default="auto",
                   help="auto (default): OpenVINO where the model was exported once with "
                        "lungseg export-ir (no TensorFlow to start: seconds sooner), else "
                        "TensorFlow")
    p.add_argument("--input", required=True,
                   help="a CT file (.nii/.nii.gz), a patient folder holding ct.nii.gz, a "
                        "folder of DICOM files (searched at any depth; one CT series is "
                        "read), or a folder of patient folders")
    p.add_argument("--series", default=None,
                   help="DICOM input: the SeriesInstanceUID to read (default: the CT series "
                        "with most slices, then the thinnest, then a lung reconstruction; "
                        "when there are several, a line says which was read and lists the "
                        "others)")
    p.add_argument("--output_mask", default=None,
                   help="where to write the lung mask (uint8 NIfTI) for a single scan")
    p.add_argument("--output_prob", default=None,
                   help="where to write the lung probability (float32 NIfTI) for a single "
                        "scan (folder mode always writes it)")
    p.add_argument("--output_dir", default=None,
                   help="folder mode: write OUTPUT_DIR/<patient>/lung_pred.nii.gz, "
                        "lung_prob.nii.gz and lung_summary.json, and OUTPUT_DIR/"
                        "lung_summary.csv over all patients")
    p.add_argument("--output_json", default=None,
                   help="single scan: write a summary (lung volumes right and left, quality "
                        "flag with reasons) to this JSON file; folder mode writes "
                        "OUTPUT_DIR/<patient>/lung_summary.json")
    p.add_argument("--rescale", nargs=2, type=float, metavar=("SLOPE", "INTERCEPT"),
                   help="turn stored values into HU (hu = SLOPE * value + INTERCEPT) for a "
                        "file whose header does not; e.g. 1 -1024 for raw scanner values")
    p.add_argument("--assume_hu", action="store_true",
                   help="accept intensities that do not look like HU (by default such a scan "
                        "is refused: the model would see nothing it knows)")
    p.add_argument("--assume_orientation", metavar="AXCODES", default=None,
                   help="for a NIfTI header without orientation (qform and sform codes 0, "
                        "refused by default): how its voxels are stored, e.g. LPS or RAS")
    p.add_argument("--output_seg", default=None,
                   help="DICOM input, single scan: also write the mask as a DICOM Segmentation "
                        "object (.dcm) referencing the series, for 3D Slicer or a PACS")
    p.add_argument("--labels", choices=("lung", "lr"), default="lung",
                   help="mask labels: 'lung' 1 = lung (default); 'lr' 1 = right lung, "
                        "2 = left lung (the patient's sides, from the header)")
    p.add_argument("--thr", type=float, default=0.5, help="probability threshold (default 0.5)")
    p.add_argument("--tta", action="store_true",
                   help="average the 8 flip combinations (test-time augmentation)")
    p.add_argument("--postprocess", action="store_true",
                   help="keep the one or two largest components and fill holes")
    p.add_argument("--no_refine", action="store_true",
                   help="keep the boundary as the 5 mm model grid drew it (by default it is "
                        "redrawn from the image: on a scan finer than 5 mm, voxels within 5 mm "
                        f"of it are lung if below {REFINE_HU:.0f} HU; on a 64^3, 5 mm scan, "
                        f"voxels just outside it if below {REFINE_HU_MODEL_GRID:.0f} HU)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--verbose", action="store_true",
                   help="also say on stderr what start-up and each scan cost ('timing NAME "
                        "SECONDS s' lines: keras_import on TensorFlow, model_load, scan)")
    return p


def run(args) -> int:
    """The inference command on parsed ``args`` (:func:`build_parser`): bad input before any
    scan raises; a scan that fails is one line and exit code 1 (2 if every scan failed)."""
    if not 0.0 < args.thr < 1.0:
        raise LungsegInputError(f"--thr {args.thr}: the threshold must lie strictly between 0 and 1.")
    jobs = _jobs(Path(args.input), args.output_mask, args.output_prob, args.output_dir,
                 args.output_json)
    if args.output_seg and (len(jobs) != 1 or not Path(jobs[0][1]).is_dir()):
        raise LungsegInputError(f"{args.input}: --output_seg needs one scan given as a "
                                "folder of DICOM files (the SEG references its images).")
    outputs.check_output_paths(_output_paths(jobs, args), _input_files(jobs),
                               overwrite=args.overwrite)
    from tqdm import tqdm          # the text bar: messages written through it keep their lines

    timing = (lambda name, t0: tqdm.write(f"timing {name} {time.perf_counter() - t0:.3f} s",
                                          file=sys.stderr)) if args.verbose else (lambda *a: None)
    forward, engine = forward_for(args.model, args.runtime, timing)   # TF traces at 1st scan
    model_info = {**_model_info(args.model), "runtime": engine}
    failed, summaries = [], []
    bar = tqdm(jobs, desc="inference", unit="scan", disable=len(jobs) < 2, file=sys.stderr)
    for name, scan_path, mask_out, prob_out, json_out in bar:
        t0 = time.perf_counter()
        try:
            ct, affine, header, info = reader.load_scan(
                scan_path, args.series, args.rescale, assume_hu=args.assume_hu,
                assume_orientation=args.assume_orientation)
            if (choice := series_choice_line(info)) is not None:   # several CT series: say which
                (bar.write(choice) if len(jobs) > 1 else print(choice))
            res = predict_volume(forward, ct, affine, tta=args.tta, threshold=args.thr,
                                 postprocess=args.postprocess, refine=not args.no_refine,
                                 members=True)
            # beside the sides and the mask: the baseline (for the flag) and the probability's
            # compression (zlib lets go of the GIL) in threads, that one's file held like the
            # others (its context copied); a scan's files all, or none (a full disk): the
            # threads end before the block does
            with outputs.all_or_nothing(), ThreadPoolExecutor(2) as pool:
                pending = (pool.submit(quality.baseline_mask, ct, affine, res["body"])
                           if res["mask"].any() else None)
                prob_written = prob_out is not None and pool.submit(
                    contextvars.copy_context().run, dataio.save_nifti,
                    res["prob"].astype(np.float32), affine, prob_out, header=header,
                    overwrite=args.overwrite)
                sides = split_left_right(res["mask"], affine, midline_x_mm=(
                    quality.body_midline_x_mm(ct, affine, res["body"])))
                if args.labels == "lr" and (sides == UNKNOWN_SIDE).any():
                    raise LungsegInputError(
                        f"{name}: right and left cannot be told apart (one lung in view, and the "
                        "body cut off at the scan's side: no midline to place it by); run with "
                        "--labels lung.")
                mask = sides if args.labels == "lr" else res["mask"]
                dataio.save_nifti(mask, affine, mask_out, header=header, overwrite=args.overwrite)
                if prob_written:
                    prob_written.result()
                if args.output_seg:
                    from .dicom_seg import write_seg

                    write_seg(mask, affine, info["files"], args.output_seg,
                              overwrite=args.overwrite, label_kind=args.labels)
                summary = quality.scan_summary(res["mask"], ct, affine, sides, res["members64"],
                                               pending is not None and pending.result())
                summary = {"case": name, "input": {**info, "orientation": "".join(
                               nib.aff2axcodes(affine))}, "model": model_info,
                           "threshold": args.thr, "tta": args.tta, "labels": args.labels,
                           "mask": str(mask_out), **summary,
                           "seconds": round(time.perf_counter() - t0, 2),
                           **({"seg": str(args.output_seg)} if args.output_seg else {})}
                if json_out is not None:
                    dataio.save_json(summary, json_out, overwrite=args.overwrite)
            summaries.append(summary)
            timing("scan", t0)
        except (ValueError, OSError) as exc:       # LungsegInputError, or a write that failed
            failed.append(name)
            why = exc if isinstance(exc, LungsegInputError) else f"{name}: {dataio.one_line(exc)}"
            bar.write(f"error: {why}", file=sys.stderr)   # on its own line, above the bar
            continue
        flag = summary["quality"]
        sided = (f" (right {summary['right_lung_ml']:.0f}, left {summary['left_lung_ml']:.0f})"
                 if summary["right_lung_ml"] is not None else "")
        msg = (f"{name}: no lungs found (empty mask; the scan shows no lungs?), "
               f"{time.perf_counter() - t0:.2f} s -> {mask_out}") if not mask.any() else (
               f"{name}: lung volume {summary['lung_volume_ml']:.0f} mL{sided}, quality "
               f"{flag['flag']}{': ' + '; '.join(flag['reasons']) if flag['reasons'] else ''}, "
               f"{time.perf_counter() - t0:.2f} s -> {mask_out}")
        (bar.write(msg) if len(jobs) > 1 else print(msg))
    if args.output_dir and summaries:
        write_summary_csv(summaries, Path(args.output_dir) / SUMMARY_CSV, overwrite=args.overwrite)
    if failed:
        if len(jobs) > 1:
            print(f"{len(failed)} of {len(jobs)} scans failed: {', '.join(failed)}", file=sys.stderr)
        return 1 if len(failed) < len(jobs) else 2
    return 0


def main(argv=None, prog: str | None = None) -> int:
    """``lungseg segment`` / ``python -m lungseg_utils.inference``: 0 all scans done, 1 some
    scans of a folder failed, 2 bad input; warnings are one line each."""
    return run_command(build_parser(prog), run, argv, one_line_warnings=True)



def entry() -> None:
    """The installed ``lungseg-infer`` script: :func:`main`, then ``exit_now``."""
    exit_now(main())


if __name__ == "__main__":
    entry()
