"""The project's own files: the environment recipe against pyproject.toml, the notebook pairs."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert '-e ".[dev]"' in pip
    listed = {_name(r) for r in pip if not r.startswith("-e")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    assert listed == wanted
    assert "tensorflow" in wanted and "tensorflow-cpu" not in wanted


def test_every_notebook_is_a_synced_jupytext_pair():
    import jupytext

    pys = sorted([*(ROOT / "notebooks").glob("*.py"), *(ROOT / "app").glob("*.py")])
    assert len(pys) >= 7
    for py in pys:
        nb = py.with_suffix(".ipynb")
        assert nb.exists(), f"{py.name} has no paired {nb.name}"
        a = [(c.cell_type, c.source.strip()) for c in jupytext.read(py).cells]
        b = [(c.cell_type, c.source.strip()) for c in jupytext.read(nb).cells]
        assert a == b, f"{py.name} and {nb.name} differ: run jupytext --sync and re-execute"


def test_every_notebook_names_its_kernel():
    """Opening a notebook must not ask for a kernel: the .py twin carries the kernelspec
    (jupytext.toml keeps it) and the .ipynb has it."""
    import jupytext

    for py in sorted([*(ROOT / "notebooks").glob("*.py"), *(ROOT / "app").glob("*.py")]):
        for path in (py, py.with_suffix(".ipynb")):
            spec = jupytext.read(path).metadata.get("kernelspec", {})
            assert spec.get("name") == "python3" and spec.get("language") == "python", path.name


def test_the_main_jobs_notebook_runs_print_no_jupyter_warning(tmp_path):
    """The Makefile's nbconvert flags (kernel traffic encrypted with CurveZMQ) on a one-cell
    notebook: nothing on stderr but what the notebook itself says."""
    import subprocess
    import sys

    import nbformat

    flags = re.findall(r"--KernelManager\.\S+", (ROOT / "Makefile").read_text())
    assert flags, "the Makefile's notebook command sets no kernel transport option"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('ok')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, tmp_path / "one.ipynb")
    run = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--log-level=WARN",
                          "--to", "notebook", "--execute", "--inplace", *flags,
                          str(tmp_path / "one.ipynb")], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "WARNING" not in run.stderr and "without encryption" not in run.stderr, run.stderr
    assert nbformat.read(tmp_path / "one.ipynb", 4).cells[0].outputs[0]["text"] == "ok\n"


def test_executed_notebooks_have_outputs():
    import nbformat

    for nb_path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        nb = nbformat.read(nb_path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.get("execution_count") for c in code), f"{nb_path.name} has unexecuted cells"


def test_committed_reference_ensemble_is_intact():
    """results/reference/manifest.json (the inference command's default model): every member
    file is there with its recorded SHA-256, and every case is held out by exactly one member
    that did not train on it."""
    from lungseg_utils import config, inference, dataio

    manifest = dataio.load_json(config.REFERENCE_DIR / inference.MANIFEST)
    members = manifest["members"]
    assert manifest["folds"] == len(members) >= 2
    for m in members:
        path = config.REFERENCE_DIR / m["file"]
        assert dataio.file_sha256(path) == m["sha256"], m["file"]
        assert not set(m["train"]) & set(m["test"]), m["file"]
    held_out = sorted(c for m in members for c in m["test"])
    assert len(held_out) == len(set(held_out))
    assert inference.resolve_model_path() == config.REFERENCE_DIR


def test_committed_models_are_the_members_once_and_load_with_keras_alone():
    """The .keras files git tracks are exactly the reference ensemble's members (no copy of a
    member, no stale model), and each loads with a plain ``keras.saving.load_model(path)``
    (no custom objects, safe mode) and predicts a probability map of the input's shape. They
    are stored as float16 and take at most 60 MB together."""
    import subprocess

    import numpy as np

    from lungseg_utils import config, inference, dataio

    tracked = subprocess.run(["git", "ls-files", "*.keras"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    members = dataio.load_json(config.REFERENCE_DIR / inference.MANIFEST)["members"]
    ref = config.REFERENCE_DIR.relative_to(ROOT).as_posix()
    assert sorted(tracked) == sorted(f"{ref}/{m['file']}" for m in members)
    # What a clone downloads: the members stored as float16 (storage; measured by compact), 60 MB at most.
    from lungseg_utils.study import compact

    total_bytes = sum((config.REFERENCE_DIR / m["file"]).stat().st_size for m in members)
    assert total_bytes <= 60e6, f"committed models take {total_bytes / 1e6:.1f} MB"
    assert all(compact.weights_dtype(config.REFERENCE_DIR / m["file"]) == "float16"
               for m in members)
    keras = config.import_keras_quietly()
    x = np.zeros((1, 64, 64, 64, 1), np.float32)
    for m in members:
        model = keras.saving.load_model(config.REFERENCE_DIR / m["file"])
        p = np.asarray(model(x))
        assert p.shape == x.shape and 0.0 <= p.min() <= p.max() <= 1.0, m["file"]


def test_a_static_render_of_the_viewer_shows_its_first_picture():
    """nbconvert --to html (no live widgets, no widget state needed) shows the committed
    viewer notebook's first view as an image, not an empty widget placeholder."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(ROOT / "app" / "viewer.ipynb", as_version=4)
    nb.metadata.pop("widgets", None)                      # as a viewer without widget state
    html, _ = HTMLExporter().from_notebook_node(nb)
    assert html.count('src="data:image/png;base64,') >= 1


# ----------------------------------------------------------------------------- README
def test_readme_is_a_short_course_readme_with_the_two_commands_first():
    """README.md: about 150 lines, the two commands (``make all``, ``make test``) in its first
    40, and the blocks that code renders (results, job, bench) each present once."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 160, f"README.md has {len(lines)} lines; move the rest to docs/"
    head = "\n".join(lines[:40])
    assert "make all" in head and "make test" in head
    text = "\n".join(lines)
    for block in ("results", "job", "bench"):
        start, end = f"<!-- {block}:start -->", f"<!-- {block}:end -->"
        assert text.count(start) == 1 and text.count(end) == 1, block
        assert text.index(start) < text.index(end), block


def test_readme_and_docs_link_only_to_files_that_exist():
    """Every relative Markdown link of README.md and docs/*.md (anchors aside) names a file
    or folder of the checkout; the README links each docs/ page."""
    readme = (ROOT / "README.md").read_text()
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert pages, "docs/ has no pages"
    for page in pages:
        assert f"(docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"
    for doc in [ROOT / "README.md", *pages]:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            path = target.split("#")[0]
            if not path or re.match(r"[a-z]+:", path):
                continue
            assert (doc.parent / path).exists(), f"{doc.relative_to(ROOT)}: no {target}"
