"""benchmarks/: the measuring harness, the ISA switch, the checks and the rendering.

Correctness only: no test looks at how fast anything is. The tiny run (a base-2, depth-1
network, two repetitions, every task in one of two processes side by side) exercises every
measuring code path in about half a minute on an idle machine.
"""

import copy
import json
import re
import subprocess
import sys
import time
import types
from importlib.util import find_spec
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
sys.path[:0] = [str(BENCH)]
import render  # noqa: E402
import run  # noqa: E402
import tasks  # noqa: E402

COMMITTED = json.loads((BENCH / "results.json").read_text())
#: A fixed results file (one idle AVX-512 run, 2026-11-27) for tests that check values.
FIXTURE = json.loads((REPO / "tests" / "fixtures" / "bench_results.json").read_text())
TASK_KEYS = {"ceiling", "train_f32", "train_bf16", "epoch", "inference_f32", "inference_bf16"}


def _scaled(entry: dict, factor: float) -> dict:
    """A copy of one ISA's results with every timing multiplied by ``factor``."""
    def walk(o):
        if isinstance(o, dict):
            if {"median", "min", "max"} <= set(o):
                return {**o, **{k: o[k] * factor for k in ("median", "min", "max")}}
            return {k: (v / factor if k.endswith(("gflops", "_per_s")) else walk(v))
                    for k, v in o.items()}
        return [walk(v) for v in o] if isinstance(o, list) else o
    return walk(copy.deepcopy(entry))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One tiny run at this CPU's own ISA into a temporary folder that holds a copy of the
    committed results.json (whose columns it drops, being tiny, and whose recipes it keeps)."""
    out = tmp_path_factory.mktemp("bench")
    (out / "results.json").write_bytes((BENCH / "results.json").read_bytes())
    readme_before = (REPO / "README.md").read_text()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(BENCH / "run.py"), "--tiny", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert (REPO / "README.md").read_text() == readme_before  # a tiny run leaves README alone
    return out, json.loads((out / "results.json").read_text()), time.perf_counter() - t0


@pytest.mark.slow
def test_tiny_run_measures_every_task(tiny):
    out, results, wall = tiny
    assert results["schema"] == run.SCHEMA and (out / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    assert results["recipes"] == json.loads((BENCH / "results.json").read_text())["recipes"]
    (isa, entry), = results["isa"].items()
    assert isa == ("avx512" if "avx512f" in entry["machine"]["cpu"]["flags"] else "avx2")
    assert entry["tiny"] and entry["errors"] == {}
    assert TASK_KEYS <= set(entry["tasks"]) and any(k.startswith("scale_") for k in entry["tasks"])
    measured = render._measured(entry)
    if "cli" in measured:  # the inference command, a fresh process: its own timing lines
        c = measured["cli"]
        assert c["wall_s"]["median"] > c["scan"]["median"] > 0 and c["model_load"]["n"] >= 1
        assert c["keras_import"]["median"] > 0
        assert c["runtime"] == "tensorflow" and 0.95 < c["dice"] <= 1   # the reference's mask
    if "cli_folder" in measured:  # folder mode: one process, the later scans at the warm speed
        f = measured["cli_folder"]
        assert f["wall_s"]["median"] > f["scan"]["median"] + f["later_scan"]["median"] > 0
    for key in set(measured) - {"ceiling", "cli", "cli_folder"}:
        assert measured[key]["peak_rss_mib"] > 100, key
    for row in measured["train_f32"]["rows"]:
        t = row["step_s"]
        assert t["n"] == 2 and 0 < t["min"] <= t["median"] <= t["max"]
    inf = measured["inference_f32"]
    assert 0 <= inf["mean_test_dice"] <= 1 and len(inf["test_cases"]) >= 1
    if "native" in measured:
        nat = measured["native"]
        stages = nat["stages_s"]
        assert stages["total"]["median"] >= stages["predict_volume"]["median"] > 0
        assert nat["tta8_total_s"]["median"] > 0 and len(nat["shape"]) == 3
    ep = measured["epoch"]
    assert ep["epochs_run"] == 2 and ep["pipeline"]["augment_samples_per_s"] > 0
    assert set(entry["checks"]) == {"pipeline_headroom", "training_memory", "inference_memory"}
    assert all(isinstance(ok, bool) and text for ok, text in entry["checks"].values())
    md = (out / "RESULTS.md").read_text()
    assert "tiny run" in md and "## GPU" in md
    print(f"tiny run: {wall:.0f} s")


def test_isa_switch_reaches_the_measuring_process():
    assert set(run.ISA_ENV) == set(render.ISA_LABEL)
    # one process, two tasks: the failing first one does not stop the second
    done = run.run_tasks({"bad": ("no_such_task", {}),
                          "ceiling": ("ceiling", {"n": 64, "reps": 1, "bf16": False})},
                         run.ISA_ENV["avx2_eigen"])
    r, bad = done["ceiling"], done["bad"]
    assert r["onednn_opts"] == "0" and r["bf16_gflops"] is None
    assert set(r["runs"]) == {"numpy_f32", "tf_f32"} and r["f32_gflops"] > 0
    assert "no_such_task" in bad["error"]
    planned = {k: p for k, _, p in run.plan(run.reference_info(), tiny=True, isa="avx2")}
    assert planned["train_bf16"]["skip"] and planned["inference_bf16"]["skip"]
    assert not planned["train_f32"].get("skip") and planned["ceiling"]["bf16"] is False
    eigen = {k: p for k, _, p in run.plan(run.reference_info(), tiny=False, isa="avx2_eigen")}
    assert eigen["scale_96"]["skip"] and eigen["train_bf16"]["skip"] and "cli" in eigen
    assert not eigen["train_f32"].get("skip") and not eigen["epoch"].get("skip")
    assert run.ISA_ENV["avx2_eigen"] == {"TF_ENABLE_ONEDNN_OPTS": "0"}


def test_cpu_flags_match_proc_cpuinfo():
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = run.cpu_info()["flags"]
    for flag in ("avx2", "avx512f"):
        assert (flag in flags) == bool(re.search(rf"\b{flag}\b", text)), flag


def test_the_readme_block_is_rendered_from_results_json():
    text = (REPO / "README.md").read_text()
    block = text.split(render.README_START)[1].split(render.README_END)[0].strip()
    assert block == render.readme_block(COMMITTED)
    job = text.split(render.JOB_START)[1].split(render.JOB_END)[0].strip()   # beside the commands
    assert job == render.job_line(COMMITTED) and "min on" in job


def test_derived_numbers_of_a_results_file():
    entry, ref = FIXTURE["isa"]["avx512"], FIXTURE["reference"]
    n = render.numbers(entry, ref)
    t = entry["tasks"]
    step = next(r for r in t["train_f32"]["rows"] if r["batch"] == 2)["step_s"]["median"]
    assert n["headroom"] == pytest.approx(t["epoch"]["pipeline"]["augment_samples_per_s"]
                                          * step / 2)
    assert n["infer_frac"] == pytest.approx(t["train_f32"]["forward_flops"]
                                            / t["inference_f32"]["compiled_s"]["median"]
                                            / 1e9 / t["ceiling"]["f32_gflops"])
    assert n["mem_infer"] == max(t["native"]["peak_rss_mib"], t["inference_f32"]["peak_rss_mib"])
    assert all(ok for ok, _ in entry["checks"].values())


def test_both_isas_side_by_side_with_their_ratio():
    results = copy.deepcopy(FIXTURE)
    results["isa"]["avx2"] = _scaled(results["isa"]["avx512"], 4.0)
    table = [line for line in render.summary(results) if line.startswith("|")]
    assert table[0].count("|") == 5 and "AVX2 / AVX-512 time" in table[0]
    rows = {line.split(" | ")[0]: line for line in table[2:]}
    step_row = next(v for k, v in rows.items() if "**Training** step" in k)
    assert step_row.endswith("| 4.00× |") and "781 ms" in step_row and "3.12 s" in step_row
    ceiling_row = next(v for k, v in rows.items() if "ceiling** (large" in k)
    assert ceiling_row.endswith("| 4.00× |")
    md = render.results_markdown(results).splitlines()
    assert "|  | AVX-512 | AVX2 only |" in md
    row = next(line for line in md if line.startswith("| Training step: f32, 64³, batch 2 |"))
    assert row.count("0.781 s") == 1 and row.count("3.12 s") == 1


def test_checks_fail_on_low_headroom_and_high_memory():
    entry, ref = copy.deepcopy(FIXTURE["isa"]["avx512"]), FIXTURE["reference"]
    consume = render.numbers(entry, ref)["consume"]
    entry["tasks"]["epoch"]["pipeline"]["augment_samples_per_s"] = 4.0 * consume
    entry["tasks"]["epoch"]["peak_rss_mib"] = 5000.0
    c = render.checks(entry, ref)
    assert not c["pipeline_headroom"][0] and "4.0×" in c["pipeline_headroom"][1]
    assert not c["training_memory"][0] and c["inference_memory"][0]
    del entry["tasks"]["native"], entry["tasks"]["inference_f32"]
    assert render.checks(entry, ref)["inference_memory"] == [False, "not measured"]


def test_a_failed_task_is_reported_not_rendered():
    results = copy.deepcopy(FIXTURE)
    entry, ref = results["isa"]["avx512"], results["reference"]
    entry["tasks"]["epoch"], entry["errors"] = {}, {"epoch": "Traceback\nValueError: boom\n"}
    md = render.results_markdown(results)
    assert "| `epoch` | failed: ValueError: boom |" in md and "`train.train`: epoch" not in md
    assert "- ⚠ AVX-512: failed: epoch." in render.summary(results)
    assert render.checks(entry, ref)["training_memory"] == [False, "not measured"]


def test_a_recipe_row_names_its_size_dice_and_the_cases_below_the_baseline():
    case = lambda cid, unet, base: {"case_id": cid, "unet": {"dice": unet},  # noqa: E731
                                    "baseline": {"dice": base}}
    block = {"summary": {"unet": {"dice": {"mean": 0.98, "worst_value": 0.97}}},
             "cases": [case("p1", 0.99, 0.98), case("p2", 0.97, 0.975)]}
    row = render.recipe_row({"members": [{}, {}, {}], "settings": {"epochs": 100}},
                            {"grid64": block, "native": block, "run": "x"})
    assert row == {"members": 3, "epochs": 100, "dice": {g: [0.98, 0.97, ["p2"]]
                                                         for g in ("grid64", "native")}}
    table = render.recipe_table({"recipes": {"three": row}})
    assert "| three | 3 × 100 | 0.9800 (0.9700) | 0.9800 (0.9700) | p2 |" in table
    assert render.recipe_table({}) == []


def test_update_readme_replaces_only_the_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{render.README_START}\nold\n{render.README_END}\noutro\n")
    assert render.update_readme(readme, FIXTURE)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "\nold\n" not in text
    assert render.update_readme(readme, FIXTURE) and readme.read_text() == text
    both = tmp_path / "both.md"
    both.write_text(f"{render.JOB_START}\nold job\n{render.JOB_END}\n{render.README_START}\n"
                    f"{render.README_END}\n")
    results = {**FIXTURE, "job": {"make_all": {"avx2": {
        "wall_s": 600.0, "finished": "2026-12-01T10:00:00",
        "cpu": {"model": "Some CPU", "logical_cpus": 2, "avx512": False}}}}}
    assert render.update_readme(both, results)
    assert "old job" not in both.read_text()
    assert "10 min on AVX2 only (Some CPU, 2 cores, 2026-12-01)" in both.read_text()
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    assert not render.update_readme(plain, FIXTURE) and plain.read_text() == "no markers\n"


def test_render_only_rewrites_outputs_from_results_json(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(COMMITTED))
    assert run.main(["--render", "--out", str(tmp_path), "--no-readme"]) == 0
    assert json.loads((tmp_path / "results.json").read_text())["isa"] == COMMITTED["isa"]
    assert (tmp_path / "RESULTS.md").read_text() == (BENCH / "RESULTS.md").read_text()
    assert run.main(["--render", "--out", str(tmp_path / "none")]) == 2


def test_merge_keeps_every_other_column_each_with_its_machine():
    assert FIXTURE["schema"] == run.SCHEMA and all("machine" in e for e in FIXTURE["isa"].values())
    assert set(run.merge(FIXTURE, "avx2", tiny=False)) == {"avx512"}
    assert run.merge(FIXTURE, "avx512", tiny=False) == {}               # its own is replaced
    assert run.merge(FIXTURE, "avx2", tiny=True) == {} and run.merge(None, "avx2", False) == {}


def test_columns_of_other_machines_and_the_before_after_ratio():
    results = copy.deepcopy(FIXTURE)
    results["isa"]["avx2"] = _scaled(results["isa"]["avx512"], 2.0)
    results["isa"]["avx2"]["machine"] = {**FIXTURE["isa"]["avx512"]["machine"],
                                         "cpu": {"model": "Laptop CPU", "flags": ["avx2", "fma"]}}
    results["isa"]["avx2_eigen"] = _scaled(results["isa"]["avx512"], 8.0)
    results["isa"]["avx2_eigen"]["machine"] = results["isa"]["avx2"]["machine"]
    table = [line for line in render.summary(results) if line.startswith("|")]
    assert "AVX2 / AVX-512 time" in table[0] and "before / after (AVX2)" in table[0]
    step_row = next(line for line in table[2:] if "**Training** step" in line)
    assert step_row.endswith("| 2.00× | 4.00× |")
    assert "Laptop CPU" in render.readme_block(results)
    results["job"] = {"make_all": {"avx2": {"wall_s": 2400.0, "finished": "2026-12-03T13:00",
                                            "cpu": {"model": "Laptop CPU", "logical_cpus": 2}}}}
    assert any("40 min on AVX2 only (Laptop CPU, 2 cores" in line
               for line in render.summary(results))


def test_wait_until_quiet_waits_for_an_idle_cpu(monkeypatch):
    clock = iter(range(100))
    fake_time = types.SimpleNamespace(sleep=lambda s: None, perf_counter=lambda: next(clock))
    monkeypatch.setattr(run, "time", fake_time)
    busy = iter([0.0, 1.0, 1.0, 2.0, 2.0, 2.05])  # one core busy, again, then idle
    monkeypatch.setattr(run, "_busy_cpu_s", lambda: next(busy))
    assert run.wait_until_quiet(100) == 3 and next(busy, None) is None
    busy = iter([0.0, 1.0] * 50)  # never idle: gives up once the budget is spent
    assert run.wait_until_quiet(2) == 4


def test_timeit_and_summarise():
    s = tasks.summarise([3.0, 1.0, 2.0, 10.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.5, 1.0, 10.0, 4)
    calls = []
    t = tasks.timeit(lambda: calls.append(1), reps=5, warmup=2)
    assert len(calls) == 7 and t["n"] == 5
    calls.clear()
    assert tasks.timeit(lambda: calls.append(1), reps=50, warmup=0, max_s=0.0)["n"] == 2
    with pytest.raises(ValueError):
        tasks.summarise([])


@pytest.mark.skipif(find_spec("jax") is not None, reason="JAX is installed")
def test_gpu_script_says_it_needs_jax():
    proc = subprocess.run([sys.executable, str(BENCH / "gpu.py")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "JAX" in proc.stderr
