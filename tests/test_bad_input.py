"""The inference command under bad or unusual input: nothing lost, nothing silently wrong.

Each case builds the bad input, runs the command (in-process, the session's smoke model) and
checks the outcome: exit status, one line on stderr naming the file and the problem, and
that no input was harmed and no half-written output is left.
"""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from lungseg_utils import dataio, geometry
from lungseg_utils.scan import reader, segment
from lungseg_utils.errors import LungsegInputError
from lungseg_utils.geometry import lps_affine
from lungseg_utils.synthetic import make_phantom


@pytest.fixture()
def scan(tmp_path):
    """A small synthetic chest CT in HU (int16 NIfTI) and its bytes, to check it survives."""
    shape, spacing = (40, 40, 30), (8.0, 8.0, 10.0)
    ct, _, affine = make_phantom(shape=shape, spacing_mm=spacing, seed=3,
                                 affine=lps_affine(shape, spacing))
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.round(ct).astype(np.int16), affine), str(path))
    return path


def _run(capsys, model, *args) -> tuple[int, str]:
    rc = segment.main(["--model", str(model), *map(str, args)])
    err = capsys.readouterr().err
    return rc, err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("case", ["mask_is_input", "prob_is_mask", "img_suffix", "txt_suffix",
                                  "folder", "parent_is_file", "json_is_input"])
def test_output_paths_are_refused_before_any_work(tmp_path, scan, smoke_model_path, capsys, case):
    before = scan.read_bytes()
    (tmp_path / "made.nii.gz").mkdir()                      # a folder with a file's name
    mask = tmp_path / "out" / "mask.nii.gz"
    args = {"mask_is_input": ["--output_mask", scan],
            "prob_is_mask": ["--output_mask", mask, "--output_prob", mask],
            "img_suffix": ["--output_mask", tmp_path / "mask.img"],
            "txt_suffix": ["--output_mask", tmp_path / "mask.txt"],
            "folder": ["--output_mask", tmp_path / "made.nii.gz"],
            "parent_is_file": ["--output_mask", scan.parent / "ct.nii.gz" / "m.nii.gz"],
            "json_is_input": ["--output_mask", mask, "--output_json", scan]}[case]
    words = {"mask_is_input": "input file", "prob_is_mask": "both --output_mask and --output_prob",
             "img_suffix": "ending in .nii.gz or .nii", "txt_suffix": "ending in .nii.gz or .nii",
             "folder": "existing folder", "parent_is_file": "cannot be created",
             "json_is_input": "ending in .json"}[case]
    rc, err = _run(capsys, smoke_model_path, "--input", scan, *args, "--overwrite")
    assert rc == 2
    assert words in _one_error_line(err)
    assert scan.read_bytes() == before                      # the input is untouched
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".tmp_*"))


def test_a_damaged_gzip_is_refused_not_read_half(tmp_path, scan, smoke_model_path, capsys):
    raw = bytearray(scan.read_bytes())
    raw[len(raw) // 2] ^= 0xFF                              # one flipped byte: the CRC fails
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(bytes(raw))
    rc, err = _run(capsys, smoke_model_path, "--input", bad, "--output_mask", tmp_path / "m.nii.gz")
    assert rc == 2 and "damaged" in _one_error_line(err) and str(bad) in err
    assert not (tmp_path / "m.nii.gz").exists()


def test_an_unknown_datatype_code_is_one_line(tmp_path, scan, smoke_model_path, capsys):
    raw = bytearray(gzip.decompress(scan.read_bytes()))
    raw[70:72] = (999).to_bytes(2, "little")                # NIfTI-1 'datatype' field
    bad = tmp_path / "odd.nii"
    bad.write_bytes(bytes(raw))
    rc, err = _run(capsys, smoke_model_path, "--input", bad, "--output_mask", tmp_path / "m.nii.gz")
    assert rc == 2 and str(bad) in _one_error_line(err)


def test_a_plain_nifti_named_gz_is_read_as_what_it_is(tmp_path, scan):
    plain = tmp_path / "plain.nii.gz"
    plain.write_bytes(gzip.decompress(scan.read_bytes()))
    a, b = dataio.load_nifti(scan)[0], dataio.load_nifti(plain)[0]
    np.testing.assert_array_equal(a, b)
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image at all")
    with pytest.raises(LungsegInputError, match="not a NIfTI image"):
        dataio.load_nifti(tmp_path / "junk.nii.gz")


@pytest.mark.parametrize("kind", ["unit", "raw"])
def test_intensities_that_are_not_hu_are_refused_with_what_to_do(tmp_path, scan, smoke_model_path,
                                                                capsys, kind):
    img = nib.load(str(scan))
    hu = np.asanyarray(img.dataobj).astype(np.float32)
    data = (hu + 1000) / 1300 if kind == "unit" else hu + 1024   # [0, 1], or stored values
    odd = tmp_path / "odd.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float32), img.affine), str(odd))
    out = tmp_path / "m.nii.gz"
    rc, err = _run(capsys, smoke_model_path, "--input", odd, "--output_mask", out)
    line = _one_error_line(err)
    assert rc == 2 and "do not look like HU" in line and "--rescale" in line
    assert not out.exists()
    rescale = ["1300", "-1000"] if kind == "unit" else ["1", "-1024"]
    rc, err = _run(capsys, smoke_model_path, "--input", odd, "--output_mask", out,
                   "--rescale", *rescale)
    assert rc == 0, err
    assert rc == 0 and nib.load(str(out)).shape == img.shape


def test_folder_mode_reports_each_bad_scan_on_its_own_line(tmp_path, scan, smoke_model_path, capsys):
    patients = tmp_path / "patients"
    for name in ("a_good", "b_damaged", "c_good"):
        (patients / name).mkdir(parents=True)
        (patients / name / "ct.nii.gz").write_bytes(scan.read_bytes())
    raw = bytearray(scan.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (patients / "b_damaged" / "ct.nii.gz").write_bytes(bytes(raw))
    rc, err = _run(capsys, smoke_model_path, "--input", patients, "--output_dir", tmp_path / "p")
    assert rc == 1
    (line,) = [ln for ln in err.splitlines() if "error:" in ln]
    assert line.startswith("error:") and "b_damaged" in line   # not glued to the progress bar
    assert (tmp_path / "p" / "c_good" / "lung_pred.nii.gz").exists()
    assert not (tmp_path / "p" / "b_damaged").exists()


def test_a_scan_of_air_has_no_lungs(tmp_path, smoke_model_path, capsys):
    """Nothing but air (-1000 HU): no body, so no lung; exit 0 and a clear line."""
    air = tmp_path / "air.nii.gz"
    nib.save(nib.Nifti1Image(np.full((80, 80, 40), -1000, np.int16),
                             lps_affine((80, 80, 40), (4.0, 4.0, 6.0))), str(air))
    out, js = tmp_path / "m.nii.gz", tmp_path / "m.json"
    assert segment.main(["--model", str(smoke_model_path), "--input", str(air),
                           "--output_mask", str(out), "--output_json", str(js)]) == 0
    assert "no lungs found" in capsys.readouterr().out
    assert not np.asanyarray(nib.load(str(out)).dataobj).any()
    summary = dataio.load_json(js)
    assert summary["lung_volume_ml"] == 0 and summary["quality"] == {
        "flag": "check", "reasons": ["no lungs found"]}


NATIVE = dataio.Path(__file__).resolve().parents[2] / "shared" / "data" / "lctsc_native"
DATA64 = NATIVE.parent / "lctsc64"


@pytest.mark.skipif(not NATIVE.is_dir(), reason="native data not beside the checkout")
def test_below_the_lungs_the_reference_finds_no_lungs(tmp_path, capsys):
    """The lowest 20 slices of a real scan (abdomen, 5 mL of lung base): the reference
    ensemble used to call 2.1 L of the air around the patient lung; now the mask stays in
    the body and, too small to be lungs, is empty."""
    case = dataio.load_case(NATIVE / "patient_001")
    ax = geometry.axial_axis(case.affine)
    assert case.affine[2, ax] > 0                            # index 0 is the lowest slice
    cut = [slice(None)] * 3
    cut[ax] = slice(0, 20)
    low = tmp_path / "abdomen.nii.gz"
    dataio.save_nifti(np.round(case.ct_hu[tuple(cut)]).astype(np.int16), case.affine, low)
    out = tmp_path / "m.nii.gz"
    assert segment.main(["--input", str(low), "--output_mask", str(out)]) == 0
    assert "no lungs found" in capsys.readouterr().out
    assert not np.asanyarray(nib.load(str(out)).dataobj).any()


@pytest.mark.skipif(not NATIVE.is_dir(), reason="native data not beside the checkout")
@pytest.mark.parametrize("folder", [NATIVE, DATA64], ids=["native", "grid64"])
def test_keeping_the_mask_in_the_body_never_cuts_real_lung(folder):
    """The body mask holds every expert-labelled lung voxel of the nine scans on both grids
    (the 64^3 cube cuts the body's sides), so the gate removes only false positives."""
    from lungseg_utils import anatomy

    for case_dir in dataio.discover_cases(folder):
        case = dataio.load_case(case_dir)
        body = anatomy.body_mask(case.ct_hu, axis=geometry.axial_axis(case.affine))
        lung = case.mask > 0
        assert (lung & ~body).sum() <= 1e-4 * lung.sum(), case.case_id


def test_unclear_messages_are_clear_now(tmp_path, scan, smoke_model_path, capsys, monkeypatch):
    """A folder with nothing to read says so; warnings are one line without source; a
    temporary file a killed write left beside an output is removed."""
    (tmp_path / "empty").mkdir()
    rc, err = _run(capsys, smoke_model_path, "--input", tmp_path / "empty",
                   "--output_mask", tmp_path / "m.nii.gz")
    assert rc == 2 and "no ct.nii.gz" in _one_error_line(err) and "--output_dir" not in err
    import warnings

    from lungseg_utils.scan import segment

    real = reader.load_scan

    def warning_load(*args, **kwargs):
        warnings.warn("something odd about this scan", dataio.LungsegWarning)
        return real(*args, **kwargs)

    monkeypatch.setattr(segment.reader, "load_scan", warning_load)
    from _shared import dead_pid

    stale = tmp_path / f".tmp_m.nii.gz.{dead_pid()}.abc12345.nii.gz"   # a killed write's
    stale.write_bytes(b"half")
    rc, err = _run(capsys, smoke_model_path, "--input", scan, "--output_mask", tmp_path / "m.nii.gz")
    assert rc == 0
    assert "warning: something odd about this scan" in err.splitlines()
    assert "warnings.warn" not in err                    # no source line
    assert not stale.exists()


@pytest.mark.parametrize("failing", ["prob.nii.gz", "m.nii.gz"])
def test_a_full_disk_leaves_none_of_the_scan_s_files_and_names_the_output(
        tmp_path, scan, smoke_model_path, capsys, monkeypatch, failing):
    """Issue #27: the disk fills while the probability is written: a complete mask stayed for
    a scan reported as failed, and the error named the input. Now neither file is left and
    the one line names the output that could not be written. The probability is written in a
    thread beside the mask: whichever fails, the other's file is not left either."""
    import errno

    real_save = nib.save

    def full_disk(img, filename):
        if str(filename).endswith(failing) or f"{failing[:-7]}." in str(filename):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(img, filename)

    monkeypatch.setattr(nib, "save", full_disk)
    out = tmp_path / "out"
    rc, err = _run(capsys, smoke_model_path, "--input", scan, "--output_mask", out / "m.nii.gz",
                   "--output_prob", out / "prob.nii.gz", "--output_json", out / "m.json")
    line = _one_error_line(err)
    assert rc == 2 and f"{failing}: could not be written" in line and "No space" in line
    assert "ct.nii.gz" not in line
    assert not out.exists() or not list(out.iterdir())          # no mask, no JSON, no temp


def test_a_header_without_orientation_needs_assume_orientation(tmp_path, scan, smoke_model_path,
                                                               capsys):
    """Issue #27: qform and sform codes 0 were accepted and nibabel's guess written out."""
    img = nib.load(scan)
    bare = nib.Nifti1Image(np.asanyarray(img.dataobj), None)
    bare.header.set_zooms(img.header.get_zooms())
    path = tmp_path / "bare.nii.gz"
    nib.save(bare, path)
    rc, err = _run(capsys, smoke_model_path, "--input", path, "--output_mask", tmp_path / "m.nii.gz")
    assert rc == 2 and "--assume_orientation" in _one_error_line(err)
    assert not (tmp_path / "m.nii.gz").exists()
    rc, _ = _run(capsys, smoke_model_path, "--input", path, "--output_mask", tmp_path / "m.nii.gz",
                 "--assume_orientation", "LPS")
    out = nib.load(tmp_path / "m.nii.gz")
    assert rc == 0 and "".join(nib.aff2axcodes(out.affine)) == "LPS"
    assert int(out.header["sform_code"]) > 0
