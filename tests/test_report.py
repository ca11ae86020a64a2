"""The PDF report and the README's results table: numbers come from the result files only.

The report is compiled against ``tests/fixtures/reference_results/`` (made-up values, with a
cross-validation block) and against a copy without the cross-validation, with placeholder
figures drawn here, and its text is read back with pypdf: every Dice it prints must be the
fixture's, formatted as the report formats it. ``report.typ`` is a document with no branch on
a result; the sentences that depend on the run come from ``lungseg_utils.report.claims``,
and a sentence the numbers contradict is named when the report is built.
"""

import json
import re
import shutil
from pathlib import Path

import pytest

from lungseg_utils import config, experiments, metrics
from lungseg_utils.report import build, claims, conditions, schema
from lungseg_utils.errors import LungsegInputError

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "reference_results"
REFERENCE = ROOT / "results" / "reference"
#: Names of the result files' and the code's that a reader of the report was never told:
#: the report defines its terms or does not use them.
UNDEFINED_TERMS = ("frame R+2cm", "SLA order", "RAS order", "z-crop", "shipped ensemble",
                   "three unseen members", "finetune profile", "5 mm staircase", "nested")


def _load(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text())  # Python's json reads NaN and Infinity


def _pdf_text(path: Path) -> tuple[int, str]:
    from pypdf import PdfReader

    reader = PdfReader(str(path))
    text = "\n".join(page.extract_text() for page in reader.pages)
    return len(reader.pages), re.sub(r"\s+", " ", text)


def _expected_numbers(folder: Path) -> dict:
    """The numbers the report must print, read straight from the result files: the summary
    of the block Table 1 shows (the cross-validation's, keys "CV ...", where
    ``evaluation.json`` has one and is not itself out of fold; else the file's own) and the
    TTA gains."""
    ev, tta = _load(folder, "evaluation.json"), _load(folder, "tta.json")
    d3 = lambda v: build.fmt_number(v, 3)  # noqa: E731
    g4 = lambda v: build.fmt_number(v, 4, signed=True)  # noqa: E731  (Dice gains)
    out = {
        "TTA gain": g4(tta["dice_gain"]["mean_diff"]),
        "TTA gain lo": g4(tta["dice_gain"]["lo"]),
        "TTA gain hi": g4(tta["dice_gain"]["hi"]),
        "TTA gain, native": g4(tta["dice_gain_native"]["mean_diff"]),
        "TTA gain lo, native": g4(tta["dice_gain_native"]["lo"]),
        "TTA gain hi, native": g4(tta["dice_gain_native"]["hi"]),
    }
    if "cross_validation" in ev and ev.get("scoring") != "out_of_fold":
        cv = ev["cross_validation"]
        for grid in ("grid64", "native"):
            for m in ("unet", "baseline", "ceiling"):
                if m in cv[grid]["summary"]:
                    s = cv[grid]["summary"][m]["dice"]
                    out[f"CV mean {m} Dice, {grid}"] = d3(s["mean"])
                    out[f"CV SD {m} Dice, {grid}"] = d3(s["sd"])
                    out[f"CV worst {m} Dice, {grid}"] = d3(s["worst_value"])
        return out
    s64, snat = ev["grid64"]["summary"], ev["native"]["summary"]
    return out | {
        "mean U-Net Dice, 64^3": d3(s64["unet"]["dice"]["mean"]),
        "SD U-Net Dice, 64^3": d3(s64["unet"]["dice"]["sd"]),
        "mean U-Net Dice, native": d3(snat["unet"]["dice"]["mean"]),
        "mean U-Net 5 mm edge Dice, native": d3(snat["unet_raw"]["dice"]["mean"]),
        "mean ceiling Dice": d3(snat["ceiling"]["dice"]["mean"]),
        "mean baseline Dice, 64^3": d3(s64["baseline"]["dice"]["mean"]),
        "worst U-Net Dice, 64^3": d3(s64["unet"]["dice"]["worst_value"]),
        "worst U-Net Dice, native": d3(snat["unet"]["dice"]["worst_value"]),
    }


def _without_cv(folder: Path) -> Path:
    """A copy of the fixture as it is before the cross-validation has run."""
    shutil.copytree(FIXTURE, folder)
    ev = _load(FIXTURE, "evaluation.json")
    del ev["cross_validation"]
    (folder / "evaluation.json").write_text(json.dumps(ev))
    return folder


def _placeholder_figures(folder: Path) -> Path:
    """Tiny PNG + PDF stand-ins for every figure the report uses, at about the size the
    notebooks export them (one column wide), one of them page-wide."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(build.REPORT_FIGURES):
        fig, ax = plt.subplots(figsize=(6.5, 1.6) if i == 0 else (3.3, 1.9))
        ax.plot([0, 1, 2], [0, i, 1])
        ax.set_title(f"placeholder {name}")
        for ext in ("png", "pdf"):
            fig.savefig(folder / f"{name}.{ext}", dpi=100)
        plt.close(fig)
    return folder


@pytest.fixture(scope="module")
def figures_dir(tmp_path_factory):
    return _placeholder_figures(tmp_path_factory.mktemp("figures"))


@pytest.fixture(scope="module")
def fixture_pdf(tmp_path_factory, figures_dir):
    tmp = tmp_path_factory.mktemp("report")
    return build.build_report(FIXTURE, figures_dir, tmp / "out" / "report.pdf")


def test_fixture_report_has_two_or_three_pages_and_the_fixture_numbers(fixture_pdf):
    n_pages, text = _pdf_text(fixture_pdf)
    assert 2 <= n_pages <= 3
    assert "cross_validation" in _load(FIXTURE, "evaluation.json")
    for what, value in _expected_numbers(FIXTURE).items():
        assert value in text, f"{what} = {value} is not in the PDF"
    # the report names where its numbers came from, and leads with the cross-validation
    assert "tests/fixtures/reference_results/" in text
    assert "Out of fold" in text and "3-fold cross-validation" in text
    # two TTA cases: the bootstrap intervals are called what they are
    assert "uninformative" in text
    for term in UNDEFINED_TERMS:
        assert term not in text, term


def test_report_without_cross_validation(tmp_path, figures_dir):
    results = _without_cv(tmp_path / "results")
    pdf = build.build_report(results, figures_dir, tmp_path / "out" / "report.pdf")
    n_pages, text = _pdf_text(pdf)
    assert 2 <= n_pages <= 3
    expected = _expected_numbers(results)
    assert not any(k.startswith("CV ") for k in expected)
    for what, value in expected.items():
        assert value in text, f"{what} = {value} is not in the PDF"
    # one of the two test cases' classical masks is empty (HD95 = Infinity): printed, not crashed on
    assert "∞" in text
    assert "Out of fold" not in text and "cross-validation" not in text
    numbers = json.loads((pdf.parent / build.NUMBERS_NAME).read_text())
    assert numbers["facts"]["has_cv"] is False and numbers["scored"]["how"] == "test_split"
    block = build.results_markdown(results)
    assert "Out of fold" not in block and "held-out test cases" in block
    assert _readme_table_rows(block) == 2
    assert expected["mean baseline Dice, 64^3"] in block


def test_numbers_json_beside_the_pdf_mirrors_the_result_files(fixture_pdf):
    numbers = json.loads((fixture_pdf.parent / build.NUMBERS_NAME).read_text())
    ev = _load(FIXTURE, "evaluation.json")
    assert numbers["evaluation"]["grid64"]["summary"]["unet"]["dice"]["mean"] == \
        build.fmt_number(ev["grid64"]["summary"]["unet"]["dice"]["mean"], 3)
    assert numbers["evaluation"]["native"]["summary"]["baseline"]["hd95_mm"]["mean"] == "∞"
    assert set(numbers["figures"]) == set(build.REPORT_FIGURES)
    cv = ev["cross_validation"]["native"]["summary"]["unet"]["dice"]
    assert numbers["evaluation"]["cross_validation"]["native"]["summary"]["unet"]["dice"] \
        ["worst_value"] == build.fmt_number(cv["worst_value"], 3)
    # Table 1 shows the cross-validation, every case out of fold
    assert numbers["scored"]["how"] == "cross_validation" and numbers["scored"]["n"] == "9"
    assert numbers["table1"][0][:4] == ["U-Net", *(
        f"{build.fmt_number(s['mean'], 3)} ± {build.fmt_number(s['sd'], 3)}" if i != 1 else
        f"{build.fmt_number(s['worst_value'], 3)} ({s['worst_case_id'].split('_')[-1]})"
        for i, s in enumerate([ev["cross_validation"][g]["summary"]["unet"]["dice"]
                               for g in ("grid64", "grid64", "native")]))]
    # the facts the prose hangs on follow the numbers of that block
    snat = ev["cross_validation"]["native"]["summary"]
    assert numbers["facts"]["refine_gain"] == build.fmt_number(
        snat["unet"]["dice"]["mean"] - snat["unet_raw"]["dice"]["mean"], 3, signed=True)
    assert numbers["facts"]["tta_n_cases"] == "2" and numbers["facts"]["tta_few_cases"] is True
    # every key of the claims has its sentence, and the claim printed is recorded
    assert set(numbers["say"]) == set(numbers["claims"]) == {c.key for c in claims.CLAIMS}
    assert claims.contradicted(numbers) == []


def test_report_typ_is_a_document_without_branches():
    """Plain prose with numbers: no `#if` on a result, at most about 250 lines; the
    sentences that depend on the run are all printed through numbers.json's ``say``."""
    source = build.REPORT_TYP.read_text()
    code = "\n".join(line.split("//")[0] for line in source.splitlines())
    assert "#if" not in code and not re.search(r"(=>|[{(\[;])\s*if\b|\belse\b", code)
    assert len(source.splitlines()) <= 250
    used = set(re.findall(r"SAY\.(\w+)", source))
    assert used == {c.key for c in claims.CLAIMS}, used ^ {c.key for c in claims.CLAIMS}


def test_a_claim_the_numbers_contradict_is_named(tmp_path, figures_dir):
    numbers = build.report_numbers(FIXTURE)
    assert numbers["claims"]["versus"] == "versus-ahead"      # the fixture's U-Net leads
    claims.check(numbers)
    bad = json.loads(json.dumps(numbers))                     # the same claims, other numbers
    bad["versus"]["native"] |= {"lo": "−0.0100", "hi": "+0.0020"}
    bad["tta"]["time_s"]["tta"] = "0.10"
    # the lead is claimed in the abstract, the results and the conclusion: all three named
    assert sorted(claims.contradicted(bad)) == ["abstract-ahead", "concl-ahead",
                                                 "tta-costs-time", "versus-ahead"]
    with pytest.raises(LungsegInputError, match=r"versus-ahead.*tta-costs-time|tta-costs-time.*versus-ahead"):
        claims.check(bad)
    # a claim with no alternative stops the build: TTA faster than one pass
    results = tmp_path / "results"
    shutil.copytree(FIXTURE, results)
    tta = _load(FIXTURE, "tta.json")
    tta["time_s"] = {"single": 2.0, "tta": 1.0}
    (results / "tta.json").write_text(json.dumps(tta))
    with pytest.raises(LungsegInputError, match=r"tta_cost \(tta-costs-time\)"):
        build.build_report(results, figures_dir, tmp_path / "r.pdf")
    assert not (tmp_path / "r.pdf").exists()


def test_claims_choose_the_sentence_the_numbers_carry():
    """Where a run may legitimately differ, the sentence is chosen in Python, and only a
    sentence whose numbers carry it is printed."""
    numbers = build.report_numbers(FIXTURE)
    w = numbers["worst"]
    missed, extra = (conditions.num(w[k]) for k in ("missed_ml", "extra_ml"))
    assert missed >= 0 and extra >= 0
    chosen = lambda n, key: claims.say(n)[1][key]  # noqa: E731
    # the direction of the worst case's errors: only where missed and added lung both carry it
    for m, e, expected in (("120", "30", "worst-missed"), ("30", "120", "worst-extra"),
                           ("74", "63", "worst-both")):
        n = json.loads(json.dumps(numbers))
        n["worst"] |= {"missed_ml": m, "extra_ml": e}
        assert chosen(n, "worst_errors") == expected
    # TTA: a narrow interval around zero is evidence of no effect; a wide one is not
    n = json.loads(json.dumps(numbers))
    n["facts"]["tta_few_cases"] = False
    n["tta"]["dice_gain_native"] |= {"mean_diff": "+0.0000", "lo": "−0.0002", "hi": "+0.0002"}
    assert chosen(n, "tta_native") == "tta-native-none"
    assert "no measurable effect" in claims.say(n)[0]["tta_native"]
    n["tta"]["dice_gain_native"] |= {"lo": "−0.0030", "hi": "+0.0040"}
    assert chosen(n, "tta_native") == "tta-native-open"
    assert chosen(n, "conclusion_tta") == "concl-tta-open"
    # an optional study that is absent has a sentence of its own, or none
    assert numbers["robustness"] is None and chosen(numbers, "robust") == "robust-absent"
    assert claims.say(numbers)[0]["seeds"] == ""


def test_report_typ_types_no_result_by_hand():
    """Three-decimal numbers (Dice, IoU) may only come from numbers.json."""
    source = build.REPORT_TYP.read_text()
    code = "\n".join(line.split("//")[0] for line in source.splitlines())
    assert not re.findall(r"(?<![\d/.])\d\.\d{3}", code)  # (DOIs such as 10.1002/ pass)
    for name in build.REPORT_FIGURES:
        assert f'"{name}"' in source, f"report.typ does not show {name}"


def test_formatting():
    f = build.fmt_number
    assert f(0.97349, 3) == "0.973" and f(0.9, 3) == "0.900"
    assert f(-0.0042, 3, signed=True) == "−0.004" and f(0.0021, 3, signed=True) == "+0.002"
    assert f(-0.0001, 3) == "0.000" and f(float("inf"), 1) == "∞" and f(float("nan"), 1) == "n/a"
    assert build.format_value("hd95_mm", 4.26) == "4.3"
    assert build.format_value("mean", 0.97349, context="dice") == "0.973"
    assert build.format_value("ci", 0.95) == "95"
    assert build.format_value("mean_diff", 0.00118, context="dice_gain") == "+0.0012"
    assert build.format_value("lo", -0.000144, context="dice_gain_native") == "−0.0001"
    tree = build.format_tree({"summary": {"hd95_mm": {"mean": 4.26, "n": 2}}, "flag": True})
    assert tree == {"summary": {"hd95_mm": {"mean": "4.3", "n": "2"}}, "flag": True}


def test_missing_result_file_or_figure_is_named(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(FIXTURE, results)
    (results / "tta.json").unlink()
    with pytest.raises(LungsegInputError, match="tta.json"):
        build.build_report(results, tmp_path / "figures", tmp_path / "r.pdf")
    shutil.copy(FIXTURE / "tta.json", results / "tta.json")
    figures = _placeholder_figures(tmp_path / "figures")
    (figures / "05_dice_paired.pdf").unlink()
    with pytest.raises(LungsegInputError, match="05_dice_paired.pdf"):
        build.build_report(results, figures, tmp_path / "r.pdf")
    assert not (tmp_path / "r.pdf").exists()


def test_missing_key_is_named(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "results")
    path = tmp_path / "results" / "evaluation.json"
    ev = _load(FIXTURE, "evaluation.json")
    del ev["native"]["summary"]["ceiling"]
    path.write_text(json.dumps(ev))
    with pytest.raises(LungsegInputError, match=r"evaluation\.json.*native\.summary\.ceiling"):
        build.results_markdown(tmp_path / "results")
    ev = _load(FIXTURE, "evaluation.json")
    del ev["native"]["cases"][0]["unet_raw"]
    path.write_text(json.dumps(ev))
    with pytest.raises(LungsegInputError, match=r"native\.cases\[patient_901\].*unet_raw"):
        build.results_markdown(tmp_path / "results")
    ev = _load(FIXTURE, "evaluation.json")
    del ev["cross_validation"]["grid64"]["summary"]["baseline"]
    path.write_text(json.dumps(ev))
    with pytest.raises(LungsegInputError, match=r"cross_validation.*grid64\.summary\.baseline"):
        build.results_markdown(tmp_path / "results")
    shutil.copy(FIXTURE / "evaluation.json", path)
    tta = _load(FIXTURE, "tta.json")
    del tta["dice_gain_native"]
    (tmp_path / "results" / "tta.json").write_text(json.dumps(tta))
    with pytest.raises(LungsegInputError, match=r"tta\.json.*dice_gain_native"):
        build.results_markdown(tmp_path / "results")


def test_tta_rows_name_their_grid_by_key(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "results")
    tta = _load(FIXTURE, "tta.json")
    tta["cases"][0]["grid"] = "64³"  # a display label, not a key
    (tmp_path / "results" / "tta.json").write_text(json.dumps(tta))
    with pytest.raises(LungsegInputError, match=r"tta\.json cases\[0\].*'64³'.*grid64, native"):
        build.read_results(tmp_path / "results")


def test_result_files_about_another_run_are_refused(tmp_path):
    """evaluation.json / tta.json record the run they describe (experiments.run_identity);
    the report reads them only in a folder holding that very model."""
    results = tmp_path / "results"
    shutil.copytree(FIXTURE, results)
    (results / "best_model.keras").write_bytes(b"model of this run")
    for name in ("evaluation.json", "tta.json"):
        data = _load(FIXTURE, name)
        (results / name).write_text(json.dumps({**data, "run": experiments.run_identity(results)}))
    assert build.read_results(results)["evaluation"]["run"]["model_sha256"]
    (results / "best_model.keras").write_bytes(b"a model trained later")
    with pytest.raises(LungsegInputError, match=r"evaluation\.json: describes the model of"):
        build.read_results(results)


def test_result_files_built_by_experiments_pass_its_own_check():
    """evaluation.json and tta.json as experiments builds them from rows: the schema the
    report reads, and the numbers of the fixture (whose summaries and gains were made so)."""
    ev = _load(FIXTURE, "evaluation.json")
    blocks = {g: experiments.method_block(ev[g]["cases"], g) for g in experiments.GRIDS}
    built = schema.check_evaluation(experiments.evaluation_result(
        config.REPO_ROOT / "results" / "x.keras", blocks,
        {g: experiments.method_block(ev["cross_validation"][g]["cases"], g)
         for g in experiments.GRIDS}))
    assert built["model"] == "results/x.keras" and built["test_cases"] == ev["test_cases"]
    assert built["cross_validation"]["folds"] == ev["cross_validation"]["folds"]
    assert built["native"]["methods"] == list(experiments.GRID_METHODS["native"])
    flat = [{"case_id": r["case_id"], **r["unet"]} for r in ev["native"]["cases"]]
    assert built["native"]["summary"]["unet"]["dice"] == metrics.summarise(flat, "dice")
    no_cv = experiments.evaluation_result("x.keras", blocks, None)
    assert "cross_validation" not in no_cv
    with pytest.raises(LungsegInputError, match="native.cases is empty"):
        schema.check_evaluation({**no_cv, "native": experiments.method_block([], "native")})
    tta = _load(FIXTURE, "tta.json")
    built = schema.check_tta(experiments.tta_result(tta["cases"], tta["time_s"], 0.9, "p"))
    for gain in ("dice_gain", "dice_gain_native"):
        assert built[gain] == pytest.approx(tta[gain])


def _readme_table_rows(block: str) -> int:
    """The body rows of the one Markdown table of a README results block."""
    table = [line for line in block.strip().splitlines() if line.startswith("|")]
    return len(table) - 2


def test_readme_results_block_is_one_small_table(tmp_path):
    """The README shows one table, the U-Net against the classical baseline on both grids
    (mean Dice, worst case and which), and one line after it: whatever the run holds."""
    folder = _out_of_fold(tmp_path / "run")
    for results in (FIXTURE, folder, _without_cv(tmp_path / "no_cv")):
        block = build.results_markdown(results).strip()
        lines = block.splitlines()
        table = [line for line in lines if line.startswith("|")]
        assert lines[:len(table)] == table and _readme_table_rows(block) == 2, results
        assert [line for line in lines[len(table):] if line.strip()] == [lines[-1]], results
        assert table[0].startswith("| Dice, ") and "64³ grid: mean" in table[0]
        assert "native grid: mean" in table[0] and table[0].count("worst case") == 2
        assert table[2].startswith("| U-Net |") and table[3].startswith("| Classical baseline |")
        assert "[report/report.pdf](report/report.pdf)" in lines[-1]
    ev = _load(folder, "evaluation.json")
    row = build.results_markdown(folder).splitlines()[3].split("|")[1:-1]
    s64, snat = (ev[g]["summary"]["baseline"]["dice"] for g in ("grid64", "native"))
    assert [c.strip() for c in row] == [
        "Classical baseline", build.fmt_number(s64["mean"], 3),
        f"{build.fmt_number(s64['worst_value'], 3)} ({s64['worst_case_id']})",
        build.fmt_number(snat["mean"], 3),
        f"{build.fmt_number(snat['worst_value'], 3)} ({snat['worst_case_id']})"]


def test_update_readme_replaces_only_the_marked_block(tmp_path):
    readme = tmp_path / "README.md"
    before = "# Title\n\nText before.\n\n## Results\n\n"
    after = "\n\n## Next\n\nText after, with a table | a | b |.\n"
    readme.write_text(before + build.README_START + "\nold table\n" + build.README_END + after)
    build.update_readme(readme, FIXTURE)
    text = readme.read_text()
    assert text.startswith(before + build.README_START) and text.endswith(build.README_END + after)
    assert "old table" not in text
    block = text[text.index(build.README_START) + len(build.README_START):text.index(build.README_END)]
    assert block.strip() == build.results_markdown(FIXTURE).strip()
    expected = _expected_numbers(FIXTURE)   # a split run with a cross-validation: out of fold
    assert "Out of fold" in block and "3-fold cross-validation" in block
    for m in ("unet", "baseline"):
        for grid in ("grid64", "native"):
            assert f"| {expected[f'CV mean {m} Dice, {grid}']} | " in block, (m, grid)
            assert f"| {expected[f'CV worst {m} Dice, {grid}']} (" in block, (m, grid)
    build.update_readme(readme, FIXTURE)  # idempotent
    assert readme.read_text() == text
    readme.write_text("no markers here\n")
    with pytest.raises(LungsegInputError, match="markers"):
        build.update_readme(readme, FIXTURE)


def test_main_builds_and_reports_errors_in_one_line(tmp_path, capsys, figures_dir):
    figures = figures_dir
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{build.README_START}\n{build.README_END}\n")
    assert build.main(["--results_dir", str(FIXTURE), "--figures_dir", str(figures),
                        "--output", str(tmp_path / "r.pdf"), "--readme", str(readme)]) == 0
    assert (tmp_path / "r.pdf").stat().st_size > 10_000
    assert "| Classical baseline |" in readme.read_text()
    assert build.main(["--results_dir", str(tmp_path / "nothing"), "--no_readme",
                        "--output", str(tmp_path / "r2.pdf")]) == 2
    assert "result file is missing" in capsys.readouterr().err


# ------------------------------------------------------------------ the committed report
needs_reference = pytest.mark.skipif(
    not (REFERENCE / "evaluation.json").exists(),
    reason="results/reference/evaluation.json does not exist yet (run notebooks 04-06)")


@needs_reference
def test_committed_report_matches_the_committed_results():
    pdf = ROOT / "report" / "report.pdf"
    assert pdf.exists(), "report/report.pdf is missing: run make report"
    n_pages, text = _pdf_text(pdf)
    assert 2 <= n_pages <= 3
    for what, value in _expected_numbers(REFERENCE).items():
        assert value in text, f"report.pdf is stale: {what} = {value} is not in it (make report)"
    for term in UNDEFINED_TERMS:
        assert term not in text, f"report.pdf uses {term!r}, which it never defines"
    committed = json.loads((ROOT / "report" / build.NUMBERS_NAME).read_text())
    fresh = build.report_numbers(REFERENCE, ROOT / "figures")
    assert committed == json.loads(json.dumps(fresh)), "report/numbers.json is stale (make report)"


@needs_reference
def test_readme_results_are_the_committed_results():
    readme = (ROOT / "README.md").read_text()
    assert build.results_markdown(REFERENCE).strip() in readme, "README results are stale (make report)"


@needs_reference
def test_every_report_figure_is_committed_and_made_by_its_notebook():
    figures = ROOT / "figures"  # not config.FIGURES_DIR: the tests point that elsewhere
    for name in build.REPORT_FIGURES:
        for ext in ("png", "pdf"):
            assert (figures / f"{name}.{ext}").is_file(), f"figures/{name}.{ext} is missing"
        notebooks = sorted((ROOT / "notebooks").glob(f"{name[:2]}_*.ipynb"))
        assert notebooks, f"no notebook {name[:2]}_*.ipynb makes {name}"
        assert any(f'\\"{name}\\"' in nb.read_text() or f"'{name}'" in nb.read_text()
                   for nb in notebooks), f"no notebook {name[:2]}_* exports {name!r}"


@needs_reference
def test_every_report_figure_prints_its_text_at_7_pt_or_more():
    """The smallest text of each figure (recorded at export) at the width the report prints
    it (read back from the compiled document), in pt."""
    printed = build.printed_figures(REFERENCE, ROOT / "figures")
    assert sorted(f["name"] for f in printed) == sorted(build.REPORT_FIGURES)
    for f in printed:
        assert f["min_font_pt"] is not None, f"{f['name']}: exported without its text size"
        assert f["printed_min_font_pt"] >= 7.0 - 1e-6, (
            f"{f['name']}: smallest text {f['min_font_pt']:.1f} pt drawn at "
            f"{f['exported_in']:.2f} in, printed {f['width_pt'] / 72:.2f} in wide: "
            f"{f['printed_min_font_pt']:.1f} pt")


def test_smallest_text_is_measured_where_it_is_drawn(tmp_path):
    """viz.smallest_text_pt finds a small tick label; a hidden one does not count; the PNG
    carries it and the report's figure table reads it back."""
    import matplotlib
    import matplotlib.pyplot as plt

    from lungseg_utils.report import figures
    from lungseg_utils import viz

    matplotlib.use("Agg")
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [0, 1])
    ax.set_title("title", fontsize=9)
    ax.tick_params(labelsize=6)
    assert viz.smallest_text_pt(fig) == 6.0
    ax.text(0.5, 0.5, "hidden", fontsize=4, visible=False)
    assert viz.smallest_text_pt(fig) == 6.0
    ax.tick_params(labelsize=8)
    assert viz.smallest_text_pt(fig) == 8.0
    for name in build.REPORT_FIGURES:
        viz.export_figure(fig, name, tmp_path)
    plt.close(fig)
    info = figures.figure_info(tmp_path)
    assert {v["min_font_pt"] for v in info.values()} == {8.0}


def test_report_figures_are_distinct_and_the_reference_is_where_the_tests_look():
    assert len(set(build.REPORT_FIGURES)) == len(build.REPORT_FIGURES)
    assert config.REFERENCE_DIR == REFERENCE


def test_report_shows_robustness_and_seed_spread(tmp_path, figures_dir):
    from lungseg_utils.study import robustness

    folder = tmp_path / "run"
    shutil.copytree(FIXTURE, folder)
    methods = ("member", "ensemble_all", "baseline")
    rows = [{"case_id": f"p{c}", "shift": s, **{m: 0.9 + 0.01 * c + 0.001 * k + 0.02 * j
                                               for j, m in enumerate(methods)}}
            for c in range(3) for k, s in enumerate(("as stored", "HU +50"))]
    rows[3]["member"] = 0.8123                      # p1 under HU +50: the hardest case
    result = {"shifts": {s: robustness.SHIFTS[s] for s in ("as stored", "HU +50")},
              "methods": list(methods), "rows": rows,
              "summary": robustness.summarise(rows, methods)}
    (folder / "robustness.json").write_text(json.dumps(result))
    spread = {"fold": 0, "seeds": [42, 43, 44], "rows": [],
              "summary": [{"case_id": "p0", "grid": "native", "min": 0.951, "max": 0.9734,
                           "range": 0.0224, "sd": 0.01}]}
    (folder / "seed_spread.json").write_text(json.dumps(spread))
    numbers = build.report_numbers(folder)
    assert numbers["robustness"]["facts"]["hardest_shift"] == "HU +50"
    assert numbers["robustness"]["facts"]["lowest"]["member"] == "0.812"
    assert numbers["seeds"]["max_range"] == "0.022"
    groups = numbers["robustness"]["groups"]                # the table: shifts grouped
    assert [g["label"] for g in groups] == ["as stored", "HU recalibrated"]
    assert groups[1]["member"]["worst"] == "0.812"
    assert numbers["robustness"]["hardest"]["label"] == "HU recalibrated"
    assert numbers["claims"]["robust_result"] == "robust-result"
    pages, text = _pdf_text(build.build_report(folder, figures_dir, tmp_path / "r.pdf"))
    assert 2 <= pages <= 3
    assert "Controlled changes of the scans" in text and "HU recalibrated" in text
    assert "0.812" in text and "every HU value shifted by ±50" in text
    mean = build.fmt_number(result["summary"]["HU +50"]["member"]["mean"], 3)
    assert mean in text
    assert "seeds 42, 43, 44" in text and "0.022" in text
    for term in UNDEFINED_TERMS:
        assert term not in text, term
    # a robustness file about another run is refused
    result["run"] = {"run": "elsewhere", "model_sha256": "0" * 64, "manifest_sha256": None}
    (folder / "robustness.json").write_text(json.dumps(result))
    with pytest.raises(LungsegInputError, match="robustness.json: describes the model"):
        build.report_numbers(folder)


def test_report_says_how_k_was_chosen_and_the_readme_points_there(tmp_path, figures_dir):
    folder = tmp_path / "run"
    shutil.copytree(FIXTURE, folder)

    def cand(k, dice, worst, rob):
        return {"k": k, "train_cases": [9 - k // 2 - 1, 9 - k // 2], "bytes": k * 11.2e6,
                "dice": {g: {"mean": dice, "worst_value": worst, "worst_case_id": "p1"}
                         for g in ("grid64", "native")},
                "robustness": {"mean_of_worst": rob}}

    sizes = {"candidates": [cand(5, 0.9858, 0.9812, 0.9634), cand(3, 0.9848, 0.9765, 0.9581)],
             "chosen": {"k": 5, "folder": "k5", "why": []}}
    (folder / "ensemble_size.json").write_text(json.dumps(sizes))
    shown = build.report_numbers(folder)["ksize"]
    assert shown["chosen"] == "5" and [r["k"] for r in shown["rows"]] == ["3", "5"]
    expected = {"mb": "56", "train_cases": "6–7", "dice_grid64": "0.986",
                "worst_native": "0.981", "rob_worst": "0.963"}
    assert {k: shown["rows"][1][k] for k in expected} == expected
    block = build.results_markdown(folder)                  # the README's one small table
    assert "how many members: [report/report.pdf]" in block and "K = 5" not in block
    _, text = _pdf_text(build.build_report(folder, figures_dir, tmp_path / "r.pdf"))
    assert "The number of members, K = 5, was chosen by measurement" in text
    assert "0.9858 against 0.9848" in text
    sizes["run"] = {"run": "elsewhere", "model_sha256": "0" * 64, "manifest_sha256": None}
    (folder / "ensemble_size.json").write_text(json.dumps(sizes))
    with pytest.raises(LungsegInputError, match="ensemble_size.json: describes the model"):
        build.report_numbers(folder)


def test_robustness_numbers_name_the_honest_ensemble_by_its_size():
    from lungseg_utils.report import values_studies
    from lungseg_utils.study import robustness

    methods = ("member", "member_2", "ensemble_oof", "ensemble_all", "baseline")
    rows = [{"case_id": "p0", "shift": "as stored", **{m: 0.95 for m in methods}}]
    result = {"methods": list(methods), "rows": rows, "ensembles": ["a", "b", "c"],
              "summary": robustness.summarise(rows, methods)}
    shown = values_studies.robustness_numbers(result)
    assert shown["methods"] == ["member", "ensemble_oof", "ensemble_all", "baseline"]
    assert shown["n_unseen"] == "3"
    assert values_studies.robustness_numbers({**result, "ensembles": ["a", "b"]})["n_unseen"] == "2"


def _out_of_fold(folder: Path) -> Path:
    """A copy of the fixture as an ensemble's run writes it: every case scored out of fold
    (the fixture's cross-validation block as the main blocks) and a manifest of 3 members."""
    shutil.copytree(FIXTURE, folder)
    ev = _load(FIXTURE, "evaluation.json")
    cv = ev.pop("cross_validation")
    ev.update(scoring="out_of_fold", grid64=cv["grid64"], native=cv["native"],
              test_cases=[r["case_id"] for r in cv["grid64"]["cases"]])
    (folder / "evaluation.json").write_text(json.dumps(ev))
    ids = ev["test_cases"]
    members = [{"file": f"cv/fold_{i}/best_model.keras", "fold": i, "test": ids[i::3],
                "train": [c for c in ids if c not in ids[i::3]], "bytes": 5_400_000}
               for i in range(3)]
    (folder / "manifest.json").write_text(json.dumps({"members": members, "folds": 3}))
    return folder


def test_out_of_fold_report_leads_with_every_case(tmp_path, figures_dir):
    folder = _out_of_fold(tmp_path / "run")
    numbers = build.report_numbers(folder)
    assert numbers["facts"]["out_of_fold"] and numbers["n_cases"]["test"] == "9"
    assert numbers["ensemble"] == {"members": "3", "total_mb": "16", "member_mb": "5.4"}
    pages, text = _pdf_text(build.build_report(folder, figures_dir, tmp_path / "r.pdf"))
    assert 2 <= pages <= 3
    assert "ensemble of 3 U-Nets" in text and "score every case with the member" in text
    assert "The 9 cases were split" in text and "Out of fold: each of the 9 cases" in text
    ev = _load(folder, "evaluation.json")
    for what, value in _expected_numbers(folder).items():    # Table 1: the 9 cases' summary
        assert value in text, f"{what} = {value} is not in the PDF"
    block = build.results_markdown(folder)
    assert "**Out of fold:** each of the 9 cases segmented by the member of the 3-member " \
        "ensemble" in block
    worst = ev["native"]["summary"]["baseline"]["dice"]
    assert f"| {build.fmt_number(worst['worst_value'], 3)} ({worst['worst_case_id']}) |" in block
