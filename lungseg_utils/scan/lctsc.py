"""The whole LCTSC collection from The Cancer Imaging Archive, in this project's two layouts.

``lungseg fetch lctsc --dest DIR`` (or ``python -m lungseg_utils.scan.lctsc lctsc --dest
DIR``) lists the collection's CT and RTSTRUCT series through TCIA's public NBIA REST API
(v1: ``getSeries``, ``getImage``), downloads each series as a ZIP, and converts each CT with
its expert contours (Lung_L ∪ Lung_R, :mod:`lungseg_utils.scan.rtstruct`) into
``DIR/lctsc_native/<case>/`` (the scanner's grid with 2 x 2 in-plane blocks averaged) and
``DIR/lctsc64/<case>/`` (the course format: 64^3 voxels of 5 mm, L,P,S, the cube centred on
the lung mask's bounding box), as ``../shared/data/DATA.md`` describes them.

It is resumable: each ZIP, unzipped series and case folder is written through
:func:`lungseg_utils.dataio.atomic_write` (to a temporary file or folder, renamed when
complete), a finished one is not fetched again, and what a killed run left half-written is
removed, so a killed run goes on where it stopped. ``DIR/manifest.json`` records every case's TCIA identifiers
and the sha256 of every file written. Case ids follow the PatientID
(``LCTSC-Train-S1-001`` -> ``lctsc_train_s1_001``).

The transport is a plain ``fetch(url) -> bytes`` (urllib, with retries on 5xx and network
errors); tests replay recorded responses through it. TCIA's own client, ``tcia_utils``
(``nbia.getSeries``, ``nbia.downloadSeries``), does the same two requests but pulls pandas,
pyarrow, duckdb, plotly and idc-index with it, so it is not a dependency here.

The data are CC BY 3.0: cite them as ``../shared/data/DATA.md`` (and ``data/README.md``) say.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from .. import dataio
from ..errors import LungsegInputError
from ..runs.command import run_command
from . import outputs

NBIA_URL = "https://services.cancerimagingarchive.net/nbia-api/services/v1/"
COLLECTION = "LCTSC"
RETRIES, BACKOFF_S = 4, 2.0
NATIVE_BLOCK = 2                # in-plane voxels averaged into one (0.98 -> 1.95 mm)
CT_RANGE_HU = (-1024.0, 3071.0)


# ----------------------------------------------------------------------------- transport
def http_fetch(url: str, timeout_s: float = 120.0, retries: int = RETRIES, sleep=time.sleep) -> bytes:
    """GET ``url``; retry server errors (5xx) and network failures with exponential backoff;
    any other HTTP error, or the last failure, is one LungsegInputError line."""
    for attempt in range(retries):
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == retries - 1:
                raise LungsegInputError(f"{url}: HTTP {exc.code} {exc.reason}.") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            if attempt == retries - 1:
                raise LungsegInputError(f"{url}: cannot reach TCIA ({exc}).") from None
        sleep(BACKOFF_S * 2 ** attempt)
    raise AssertionError("unreachable")


def series_url(modality: str, collection: str = COLLECTION) -> str:
    return NBIA_URL + "getSeries?" + urllib.parse.urlencode({"Collection": collection,
                                                             "Modality": modality})


def image_url(series_uid: str) -> str:
    return NBIA_URL + "getImage?" + urllib.parse.urlencode({"SeriesInstanceUID": series_uid})


def list_cases(fetch=http_fetch, collection: str = COLLECTION) -> list[dict]:
    """One entry per patient with a CT and an RTSTRUCT in the same study: ``{"case",
    "patient_id", "study_uid", "ct_uid", "rtstruct_uid"}``, sorted by case."""
    series = {m: json.loads(fetch(series_url(m, collection)) or b"[]") for m in ("CT", "RTSTRUCT")}
    structures = {(s["PatientID"], s["StudyInstanceUID"]): s["SeriesInstanceUID"]
                  for s in series["RTSTRUCT"]}
    cases = [{"case": case_id(s["PatientID"]), "patient_id": s["PatientID"],
              "study_uid": s["StudyInstanceUID"], "ct_uid": s["SeriesInstanceUID"],
              "rtstruct_uid": structures[(s["PatientID"], s["StudyInstanceUID"])]}
             for s in series["CT"] if (s["PatientID"], s["StudyInstanceUID"]) in structures]
    return sorted(cases, key=lambda c: c["case"])


def case_id(patient_id: str) -> str:
    """``LCTSC-Train-S1-001`` -> ``lctsc_train_s1_001`` (a folder name on any system)."""
    return "".join(ch if ch.isalnum() else "_" for ch in patient_id.lower())


def download_series(series_uid: str, dest_zip: Path, fetch=http_fetch) -> Path:
    """The series' ZIP at ``dest_zip``; fetched (atomically, kept only if a valid ZIP) unless
    already there."""
    if dest_zip.is_file():
        return dest_zip
    outputs.remove_stale_temps(dest_zip)
    with dataio.atomic_write(dest_zip, overwrite=True) as part:
        part.write_bytes(fetch(image_url(series_uid)))
        if not zipfile.is_zipfile(part):
            raise LungsegInputError(f"{image_url(series_uid)}: the answer is not a ZIP archive.")
    return dest_zip


# ----------------------------------------------------------------------------- conversion
def block_mean(volume: np.ndarray, block: int = NATIVE_BLOCK) -> np.ndarray:
    """Average ``block`` x ``block`` in-plane voxels (axes 0 and 1); float32 (X//b, Y//b, Z)."""
    x, y = (n // block * block for n in volume.shape[:2])
    v = np.asarray(volume[:x, :y], np.float32)
    return v.reshape(x // block, block, y // block, block, -1).mean(axis=(1, 3))


def native_layout(ct_hu, mask, affine, block: int = NATIVE_BLOCK):
    """(ct int16, mask uint8, affine) on the near-native grid: ``block`` x ``block`` in-plane
    means (the mask's mean thresholded at 0.5), slice spacing untouched."""
    scale = np.diag([block, block, 1.0, 1.0])
    scale[:3, 3] = (block - 1) / 2.0 * np.array([1.0, 1.0, 0.0])   # the block's centre
    ct = np.clip(np.round(block_mean(ct_hu, block)), *CT_RANGE_HU).astype(np.int16)
    return ct, (block_mean(mask, block) >= 0.5).astype(np.uint8), np.asarray(affine) @ scale


def course_layout(ct_hu, mask, affine):
    """(ct int16, mask uint8, affine) in the course format: 64^3 voxels of 5 mm, L,P,S, centred
    on the centre of the lung mask's bounding box (world mm); CT anti-aliased, linearly
    interpolated, padded with -1024 and clipped to [-1024, 3071]; mask interpolated and
    thresholded at 0.5."""
    from ..config import MODEL_SHAPE
    from ..geometry import bbox_centre_mm, model_affine, resample

    if not np.any(mask):
        raise LungsegInputError("the lung mask is empty: nothing to centre the cube on.")
    dst = model_affine(bbox_centre_mm(mask, affine))
    ct = resample(ct_hu, affine, dst, MODEL_SHAPE, order=1, cval=CT_RANGE_HU[0], smooth=True)
    lung = resample(mask.astype(np.float32), affine, dst, MODEL_SHAPE, order=1, smooth=True)
    return (np.clip(np.round(ct), *CT_RANGE_HU).astype(np.int16), (lung >= 0.5).astype(np.uint8),
            dst)


def convert_case(ct_folder, rtstruct_file, dest, case: str, overwrite: bool = False) -> dict:
    """Write ``dest/lctsc_native/<case>/`` and ``dest/lctsc64/<case>/`` (ct.nii.gz,
    lung.nii.gz) from a CT series folder and its RTSTRUCT; each case folder appears whole or
    not at all. Returns ``{relative path: sha256}`` of the files written."""
    from .dicom import load_dicom_ct
    from .rtstruct import lung_mask_from_rtstruct

    dest = Path(dest)
    ct_hu, affine, _, _ = load_dicom_ct(ct_folder)
    mask = lung_mask_from_rtstruct(rtstruct_file, affine, ct_hu.shape)
    written = {}
    for layout, (ct, lung, aff) in {"lctsc_native": native_layout(ct_hu, mask, affine),
                                    "lctsc64": course_layout(ct_hu, mask, affine)}.items():
        final = dest / layout / case
        if final.exists() and not overwrite:
            raise LungsegInputError(f"{final}: exists; pass --overwrite to replace it.")
        outputs.remove_stale_temps(final, folder=True)       # what a killed run left
        with dataio.atomic_write(final, overwrite=True, folder=True) as tmp:
            dataio.save_nifti(ct, aff, tmp / dataio.CT_NAME)
            dataio.save_nifti(lung, aff, tmp / dataio.MASK_NAME)
        for name in (dataio.CT_NAME, dataio.MASK_NAME):
            written[f"{layout}/{case}/{name}"] = dataio.file_sha256(final / name)
    return written


def _unzip(zip_path: Path, folder: Path) -> Path:
    if not folder.is_dir():
        outputs.remove_stale_temps(folder, folder=True)
        with dataio.atomic_write(folder, folder=True) as tmp, zipfile.ZipFile(zip_path) as z:
            z.extractall(tmp)
    return folder


def fetch_lctsc(dest, max_cases: int | None = None, fetch=http_fetch, overwrite: bool = False,
                progress: bool = True) -> dict:
    """Download and convert the collection into ``dest`` (see the module docstring);
    resumable. Returns the manifest (also written to ``dest/manifest.json`` after each case)."""
    from tqdm import tqdm

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    manifest_path = dest / "manifest.json"
    manifest = dataio.load_json(manifest_path) if manifest_path.is_file() else {
        "collection": COLLECTION, "source": NBIA_URL, "licence": "CC BY 3.0", "cases": {}}
    cases = list_cases(fetch)[:max_cases]
    for case in tqdm(cases, desc="LCTSC", unit="case", disable=not progress, file=sys.stderr):
        done = manifest["cases"].get(case["case"])
        if done and not overwrite and all((dest / f).is_file() for f in done["files"]):
            continue
        raw = dest / "raw"
        zips = {kind: download_series(case[f"{kind}_uid"], raw / f"{case[f'{kind}_uid']}.zip", fetch)
                for kind in ("ct", "rtstruct")}
        ct_dir = _unzip(zips["ct"], raw / case["ct_uid"])
        rt_dir = _unzip(zips["rtstruct"], raw / case["rtstruct_uid"])
        rt_files = sorted(p for p in rt_dir.rglob("*") if p.is_file())
        if not rt_files:
            raise LungsegInputError(f"{zips['rtstruct']}: the RTSTRUCT archive is empty.")
        files = convert_case(ct_dir, rt_files[0], dest, case["case"], overwrite=True)
        manifest["cases"][case["case"]] = {
            **case, "files": files,
            "zips": {k: {"file": str(p.relative_to(dest)), "sha256": dataio.file_sha256(p)}
                     for k, p in zips.items()}}
        dataio.save_json(manifest, manifest_path, overwrite=True)
    return manifest


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog or "python -m lungseg_utils.scan.lctsc",
                                description="Download public data (LCTSC from TCIA) into "
                                            "this project's layouts.")
    sub = p.add_subparsers(dest="what", required=True)
    q = sub.add_parser("lctsc", help="all LCTSC scans from TCIA (needs internet access)")
    q.add_argument("--dest", required=True, help="folder for raw/, lctsc_native/, lctsc64/")
    q.add_argument("--max_cases", type=int, help="only the first N cases")
    q.add_argument("--overwrite", action="store_true", help="convert finished cases again")
    return p


def run(args) -> int:
    """The download command on parsed ``args`` (:func:`build_parser`); bad input raises."""
    manifest = fetch_lctsc(args.dest, args.max_cases, overwrite=args.overwrite)
    print(f"{len(manifest['cases'])} cases in {args.dest} (manifest.json lists their files)")
    return 0


def main(argv=None, prog: str | None = None) -> int:
    """``python -m lungseg_utils.scan.lctsc`` (``lungseg fetch``): 0 done, 2 bad input."""
    return run_command(build_parser(prog), run, argv)


if __name__ == "__main__":
    sys.exit(main())
