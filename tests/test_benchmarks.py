"""The benchmark helpers (benchmarks/): FLOP counts, the ceiling, timing statistics, the
results file and its rendering. Correctness only: no test looks at how fast anything is."""

import json
import subprocess
import sys
from importlib.util import find_spec

import numpy as np
import pytest

from lungseg_utils import config
from lungseg_utils import model as unet

BENCH = config.REPO_ROOT / "benchmarks"
sys.path[:0] = [str(BENCH)]
import render  # noqa: E402
import tasks  # noqa: E402
import time_job  # noqa: E402

keras = unet.keras


def test_conv3d_flops_of_one_layer_is_analytic():
    inp = keras.Input((8, 6, 4, 3))
    model = keras.Model(inp, keras.layers.Conv3D(5, 3, padding="same")(inp))
    per_voxel = 2 * 27 * 3 * 5 + 5  # multiply-adds of a 3x3x3x3 kernel per filter, plus bias
    assert tasks.conv3d_flops((8, 6, 4, 3), 5, 3) == 8 * 6 * 4 * per_voxel
    assert unet.count_flops(model) == 8 * 6 * 4 * per_voxel
    assert tasks.model_conv_flops(model) == 8 * 6 * 4 * (per_voxel - 5)
    assert tasks.conv3d_flops((8, 8, 8, 2), 4, 1, use_bias=False) == 8 ** 3 * 4 * 2 * 2
    assert tasks.conv3d_flops((8, 8, 8, 1), 1, 3, padding="valid") == 6 ** 3 * (2 * 27 + 1)
    assert tasks.conv3d_flops((8, 8, 8, 1), 1, 2, strides=2) == 4 ** 3 * (2 * 8 + 1)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow profiler")
def test_tf_profiler_counts_the_same_convolutions():
    model = unet.build_unet(input_shape=(16, 16, 16, 1), base_filters=2)
    prof = tasks.tf_profiler_flops(model, (16, 16, 16, 1))
    assert prof["by_op"]["Conv3D"] == tasks.model_conv_flops(model)
    assert prof["total"] == sum(prof["by_op"].values())
    # count_flops adds estimates for normalisation and element-wise ops: close, not equal
    assert 0.9 < unet.count_flops(model) / prof["total"] < 1.2


def test_matmul_ceiling_is_positive():
    out = tasks.matmul_gflops(64, "float32", "numpy", reps=2)
    assert out["gflops_best"] >= out["gflops_median"] > 0
    assert out["time"]["n"] == 2
    if keras.backend.backend() == "tensorflow":
        assert tasks.matmul_gflops(64, "bfloat16", "tensorflow", reps=2)["gflops_best"] > 0
    with pytest.raises(ValueError):
        tasks.matmul_gflops(64, "bfloat16", "numpy")


def test_summarise_and_timeit():
    s = tasks.summarise([3.0, 1.0, 2.0, 10.0])
    assert (s["min"], s["max"], s["n"]) == (1.0, 10.0, 4)
    assert s["median"] == 2.5 and s["q1"] <= s["median"] <= s["q3"]
    calls = []
    t = tasks.timeit(lambda: calls.append(1), reps=5, warmup=2)
    assert len(calls) == 7 and t["n"] == 5 and len(t["warmup_s"]) == 2
    calls.clear()
    t = tasks.timeit(lambda: calls.append(1), reps=50, warmup=0, max_s=0.0, min_reps=3)
    assert t["n"] == 3 and len(calls) == 3  # a time budget stops after min_reps
    with pytest.raises(ValueError):
        tasks.summarise([])


def test_steps_to_reach():
    log = [{"epoch": "0", "val_dice": "0.5"}, {"epoch": "1", "val_dice": "0.96"},
           {"epoch": "2", "val_dice": "0.98"}]
    assert tasks.steps_to_reach(log, 0.95, 6) == {"epoch": 2, "steps": 12, "value": 0.96}
    assert tasks.steps_to_reach(log, 0.99, 6) is None


def test_peak_rss_and_cpu_info():
    assert tasks.peak_rss_mib() > 10
    info = tasks.cpu_info()
    assert info["logical_cpus"] >= 1 and isinstance(info["avx512_bf16"], bool)


def test_time_job_records_status_and_passes_it_through(tmp_path):
    path = tmp_path / "timings.json"
    time_job.record("a", {"wall_s": 1.0}, path)
    time_job.record("b", {"wall_s": 2.0}, path)
    assert set(json.loads(path.read_text())["jobs"]) == {"a", "b"}
    proc = subprocess.run([sys.executable, str(BENCH / "time_job.py"), "notebook:x", "--",
                           sys.executable, "-c", "raise SystemExit(3)"],
                          env={"LUNGSEG_JOB_TIMINGS": str(path), "PATH": ""}, timeout=60)
    assert proc.returncode == 3
    entry = json.loads(path.read_text())["jobs"]["notebook:x"]
    assert entry["rc"] == 3 and entry["wall_s"] >= 0 and entry["peak_rss_mib"] > 0


@pytest.mark.skipif(find_spec("jax") is not None, reason="JAX is installed")
def test_gpu_script_says_it_needs_jax():
    proc = subprocess.run([sys.executable, str(BENCH / "gpu.py")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "JAX" in proc.stderr


def _check_rendering(results, tmp_path):
    assert render.validate_results(results) == []
    md = render.results_markdown(results)
    assert md.startswith("# Benchmarks") and "## Scaling" in md and "## Memory" in md
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{render.README_START}\nold\n{render.README_END}\noutro\n")
    assert render.update_readme(readme, results)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    assert "benchmarks/RESULTS.md" in text and text.count(render.README_START) == 1
    assert render.update_readme(readme, results) and readme.read_text() == text  # idempotent
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    assert not render.update_readme(plain, results) and plain.read_text() == "no markers\n"
    png = render.plot_scaling(results, tmp_path / "scaling.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_committed_results_have_the_schema(tmp_path):
    path = BENCH / "results.json"
    if not path.exists():
        pytest.skip("benchmarks/results.json not generated yet (make bench)")
    results = json.loads(path.read_text())
    _check_rendering(results, tmp_path)
    assert results["ceiling"]["f32_gflops"] > 0 and not results["tiny"]
    assert {r["batch"] for r in results["training"]} == {1, 2, 4}
    assert {r["precision"] for r in results["training"]} == {"f32", "bf16"}
    for r in results["training"]:
        assert r["step_s"]["n"] >= 2
    assert set(results["inference"]) == {"f32", "bf16"}
    fc = results["ceiling"]["flops_check"]
    assert fc["conv3d_match"] and fc["count_flops"] > 0
    assert results["gpu"]["lent"] in (True, False)


@pytest.mark.slow
def test_tiny_benchmark_run_writes_valid_outputs(tmp_path):
    """Every measuring code path, with a base-2 network and one or two repetitions."""
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, str(BENCH / "run.py"), "--tiny", "--out", str(out)],
                          cwd=config.REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    for name in ("results.json", "RESULTS.md", "scaling.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert results["tiny"] and results["errors"] == {}
    _check_rendering(results, tmp_path)
    for prec in ("f32", "bf16"):
        inf = results["inference"][prec]
        assert 0.0 <= inf["mean_test_dice"] <= 1.0 and inf["compiled_s"]["median"] > 0
    assert np.isfinite(results["memory"]["training_quick_profile_mib"])
    assert results["ceiling"]["flops_check"]["conv3d_match"]
