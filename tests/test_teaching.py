"""The notebooks teach from one source of truth (issue "Notebooks that teach the 3D U-Net"):
they show the module's own code (``viz.show_code``) instead of copies, notebook 03 previews
exactly the augmentation that trains the reference, and the TTA loop that notebook 06 shows
(``inference.flip_tta``) is the one every prediction goes through."""

import inspect
import json
from pathlib import Path

import numpy as np
import pytest

from lungseg_utils import augment, config, dataio, inference, preprocess, viz
from lungseg_utils.errors import LungsegInputError

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _code_block(obj, **kw) -> list[str]:
    text = viz.show_code(obj, **kw).data
    assert text.startswith("```python\n") and text.endswith("\n```")
    lines = text[len("```python\n"):-len("\n```")].splitlines()
    assert lines[0] == f"# {obj.__module__}.{obj.__qualname__}"     # where it lives
    return lines[1:]


def test_show_code_shows_the_real_source_without_its_docstring():
    source = inspect.getsource(preprocess.window_normalise).splitlines()
    shown = _code_block(preprocess.window_normalise)
    assert shown[0] == source[0] and shown[-1] == source[-1]
    assert '"""' not in "\n".join(shown)
    n = len(source) - len(shown)                        # the docstring's lines, left out
    assert n >= 1 and shown == source[:1] + source[1 + n:]
    assert inspect.getdoc(preprocess.window_normalise).splitlines()[0] in source[1]
    assert _code_block(preprocess.window_normalise, docstring=True) == source
    shown_class = _code_block(augment.Step)                   # a class: docstring gone too
    assert shown_class[0] == "class Step(NamedTuple):" and '"""' not in "\n".join(shown_class)
    assert all(line in inspect.getsource(augment.Step) for line in shown_class)


def test_show_code_says_which_object_has_no_source():
    with pytest.raises(LungsegInputError, match="show_code: no source"):
        viz.show_code(3)


def _brute_force_tta(forward, x):
    """For each flip: flip, predict one volume, flip back; then mean and spread."""
    preds = []
    for axes in inference.FLIPS:
        out = np.asarray(forward(np.flip(x, axes)[None, ..., None]))[..., 0]   # ([M,] 1, ...)
        out = out if out.ndim == 5 else out[None]
        preds.append(np.flip(out[:, 0], [a + 1 for a in axes]))             # (M, 64, 64, 64)
    preds = np.stack(preds)                                                # (8, M, ...)
    return preds.mean(axis=1).mean(axis=0), preds.mean(axis=1).std(axis=0), preds.mean(axis=0)


@pytest.mark.parametrize("members", [False, True])
def test_predict_prob64_is_the_flip_tta_loop(members):
    rng = np.random.default_rng(0)
    x = rng.random((64, 64, 64)).astype(np.float32)
    weights = rng.random((3, 64, 64, 64)).astype(np.float32)
    ramp = np.linspace(0, 1, 64, dtype=np.float32)[:, None, None, None]  # not flip-equivariant

    def forward(batch):
        out = [batch * w[None, ..., None] + m * ramp for m, w in enumerate(weights)]
        return np.stack(out) if members else out[0]

    prob, std, each = _brute_force_tta(forward, x)
    for batch_size in (3, 8):
        got = inference.predict_prob64(forward, x, tta=True, batch_size=batch_size,
                                       return_members=True)
        for a, b in zip(got, (prob, std, each)):
            assert a.dtype == np.float32 and a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert each.shape == ((3 if members else 1), 64, 64, 64) and std.max() > 0.1
    preds = inference.flip_tta(forward, x)
    assert preds.shape == (8, *each.shape) and preds.dtype == np.float32
    np.testing.assert_array_equal(preds[0], np.asarray(forward(x[None, ..., None]))[..., 0]
                                  .reshape(each.shape))          # the identity comes first
    single, zero = inference.predict_prob64(forward, x)           # no TTA: one variant
    np.testing.assert_allclose(single, preds[0].mean(axis=0), rtol=1e-6)
    assert not zero.any()


def _stored_outputs(name: str) -> list[tuple[str, str]]:
    """(source, text output) of each code cell of a notebook as committed."""
    cells = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())["cells"]
    return [("".join(c["source"]), "".join("".join(o.get("text", "")) for o in c["outputs"]))
            for c in cells if c["cell_type"] == "code"]


def test_notebook_03_previews_the_augmentation_of_the_main_profile():
    """Every draw the notebook shows uses the main profile's settings (``recipe``, or
    ``geometry_only``: the same with the CT-only steps off), and its stored table of the
    pipeline is the main profile's."""
    import ast

    tree = ast.parse((NOTEBOOKS / "03_augmentation_preview.py").read_text())
    assigned = {n.targets[0].id: ast.unparse(n.value) for n in ast.walk(tree)
                if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)}
    assert assigned["recipe"] == "config.get_profile('main')"
    assert assigned["geometry_only"].startswith("{**recipe, **{step.p: 0.0 for step in")
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and ast.unparse(n.func) == "augment.augment_pair"]
    assert len(calls) == 3 and all(ast.unparse(c.args[3]) in ("recipe", "geometry_only")
                                   for c in calls)
    table = [out for src, out in _stored_outputs("03_augmentation_preview")
             if "pipeline_rows(recipe)" in src]
    assert len(table) == 1
    columns = dict.fromkeys(["step", "transform", "probability", "settings", "applies to"], "")
    expected = dataio.format_table(augment.pipeline_rows(config.get_profile("main")), columns)
    assert table[0].strip() == expected.strip()
    main = config.get_profile("main")
    for step in augment.PIPELINE:       # every augmentation setting of main is in the table
        assert f"{step.p}={main[step.p]}" in expected
        assert all(f"{key}={main[key]}" in expected for key in step.keys)


def test_notebooks_render_the_module_code_they_teach():
    shown = {"02_preprocessing": "viz.show_code(preprocess.window_normalise)",
             "03_augmentation_preview": "viz.show_code(augment.augment_pair)",
             "06_tta": "viz.show_code(inference.flip_tta)"}
    for name, call in shown.items():
        assert call in (NOTEBOOKS / f"{name}.py").read_text(), name
        stored = [c for c in json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())["cells"]
                  if c["cell_type"] == "code" and "".join(c["source"]).strip() == call]
        data = stored[0]["outputs"][0]["data"]["text/markdown"]
        obj = eval(call[len("viz.show_code("):-1])                       # noqa: S307
        assert "".join(data) == viz.show_code(obj).data, f"{name}: re-run the notebook"
