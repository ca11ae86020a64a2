"""lungseg_utils.viewer.SliceViewer: its controls change the picture, overlays land on the
right voxels in the right colours, the readout is in mm and cm², the aspect follows the
voxel size, the export button writes the current view. No browser (tests/test_browser.py
drives it through Voila)."""

import numpy as np
import pytest
from matplotlib.colors import to_rgb

from lungseg_utils import viz
from lungseg_utils.errors import LungsegInputError
from lungseg_utils.viewer import SliceViewer
from _shared import SHAPE, viewer_case


@pytest.fixture
def case():
    return viewer_case()


def find(viewer, css):
    """The widget of ``viewer`` carrying the CSS class ``lungseg-<css>`` (as a browser sees it)."""
    stack = [viewer.widget]
    while stack:
        widget = stack.pop()
        if f"lungseg-{css}" in getattr(widget, "_dom_classes", ()):
            return widget
        stack.extend(getattr(widget, "children", ()))
    raise AssertionError(f"no widget with class lungseg-{css}")


def pixel_of_voxel(viewer, voxel, ax_index=0):
    """RGB of the canvas pixel that shows ``voxel`` (i, j, k) on the current slice."""
    marker = np.zeros(SHAPE, np.uint8)
    marker[voxel] = 1
    plane = viewer._axis
    r, c = np.argwhere(viz.display_slice(marker, viewer.affine, plane,
                                         voxel[viz.slicing_axis(viewer.affine, plane)]))[0]
    x, y = viewer.axes[ax_index].transData.transform((c, r))
    img = viewer.current_image()
    return img[int(img.shape[0] - y), int(x), :3].astype(int)


def rgb255(colour):
    return np.round(np.array(to_rgb(colour)) * 255).astype(int)


def test_viewer_controls_change_the_picture(case):
    v = SliceViewer(**case, title="phantom")
    assert "application/vnd.jupyter.widget-view+json" in v._repr_mimebundle_()
    assert v._index["axial"] == SHAPE[2] // 2 and v.redraw_seconds > 0
    before = v.current_image()
    v.set_slice(2)                                  # below the lung box
    after_slice = v.current_image()
    assert not np.array_equal(before, after_slice)
    find(v, "slice").value = 12                     # the slider itself
    assert "slice 12 / 19" in find(v, "readout").value
    v.set_axis("coronal")
    assert find(v, "slice").max == SHAPE[1] - 1 and find(v, "slice").value == SHAPE[1] // 2
    coronal = v.current_image()
    assert not np.array_equal(coronal, after_slice)
    v.set_overlay("errors")
    assert not np.array_equal(v.current_image(), coronal)
    find(v, "overlay").value = "uncertainty"
    assert v._overlay == "uncertainty"
    find(v, "side").value = True
    assert v.current_image().shape[1] > coronal.shape[1]   # two panels, a wider figure
    with pytest.raises(LungsegInputError, match="not available"):
        SliceViewer(case["ct_hu"], case["affine"]).set_overlay("prediction")


def test_error_map_colours_appear_where_fp_and_fn_are(case):
    v = SliceViewer(**case)
    v.set_slice(10)
    v.set_opacity(1.0)
    v.set_overlay("errors")
    fp, fn, tp = (21, 11, 10), (8, 11, 10), (15, 11, 10)
    for voxel, name in ((fp, "false positive"), (fn, "false negative"), (tp, "true positive")):
        np.testing.assert_allclose(pixel_of_voxel(v, voxel), rgb255(viz.ERROR_COLOURS[name]),
                                   atol=3)
    v.set_overlay("none")
    assert np.ptp(pixel_of_voxel(v, fp)) < 3        # grey CT only


def test_readout_gives_position_in_mm_and_area_in_cm2(case):
    v = SliceViewer(**case)
    v.set_slice(10)
    text = find(v, "readout").value
    # z = -200 + 3 * 10; area = 12 * 10 voxels * 1.5 * 2.0 mm^2 = 3.60 cm^2 (both masks).
    assert "z = -170.0 mm" in text
    assert "reference 3.60 cm&sup2;" in text and "prediction 3.60 cm&sup2;" in text
    v.set_axis("sagittal")
    v.set_slice(9)                                  # x = 100 - 1.5 * 9; 10 x 10 voxels of 2 x 3
    text = find(v, "readout").value
    assert "x = 86.5 mm" in text and "reference 6.00 cm&sup2;" in text
    assert "prediction 0.00 cm&sup2;" in text


def test_viewer_aspect_follows_voxel_size(case):
    v = SliceViewer(**case)
    for plane, (h_mm, w_mm) in {"axial": (28 * 2.0, 32 * 1.5), "coronal": (20 * 3.0, 32 * 1.5),
                                "sagittal": (20 * 3.0, 28 * 2.0)}.items():
        v.set_axis(plane)
        box = v.axes[0].get_window_extent()
        assert box.height / box.width == pytest.approx(h_mm / w_mm, rel=0.02)


def test_window_presets_and_sliders(case):
    v = SliceViewer(**case)
    find(v, "preset").value = "bone"
    assert v._window == (-500.0, 1300.0)
    v.set_window((-1000, 300))
    assert v._window == (-1000.0, 300.0) and find(v, "preset").value == "custom"


def test_uncertainty_heat_map_is_drawn_where_uncertain(case):
    v = SliceViewer(**case)
    v.set_slice(10)
    v.set_opacity(1.0)
    v.set_overlay("uncertainty")
    hot, calm = pixel_of_voxel(v, (21, 11, 10)), pixel_of_voxel(v, (5, 11, 10))
    assert np.ptp(hot) > 50 and np.ptp(calm) < 3    # coloured vs. plain grey


def test_export_button_writes_the_current_view(case, tmp_path):
    v = SliceViewer(**case, figures_dir=tmp_path)
    v.set_axis("coronal")
    v.set_slice(11)
    find(v, "export").click()
    assert (tmp_path / "viewer_coronal_11.png").exists()
    assert (tmp_path / "viewer_coronal_11.pdf").exists()
    assert "viewer_coronal_11.png" in find(v, "status").value


def test_bad_inputs_name_the_array(case):
    with pytest.raises(LungsegInputError, match="pred has shape"):
        SliceViewer(case["ct_hu"], case["affine"], pred=case["pred"][:-1])
    with pytest.raises(LungsegInputError, match="3D"):
        SliceViewer(case["ct_hu"][0], case["affine"])


# ----------------------------------------------------------------------------- the case browser
def test_case_browser_shows_a_case_at_once_and_switches_cases(demo_data):
    from lungseg_utils import dataio
    from lungseg_utils.scan.browser import CaseBrowser

    folders = dataio.discover_cases(demo_data)
    browser = CaseBrowser({p.name: p for p in folders[:2]})   # no model: no segment button
    assert find(browser, "browser-segment").disabled
    first = browser.viewer.current_image()
    assert browser.viewer.mask is not None and browser.viewer.pred is None
    find(browser, "browser-case").value = folders[1].name     # what the picker does
    assert browser.scan["label"] == folders[1].name
    assert not np.array_equal(browser.viewer.current_image(), first)
    assert folders[1].name in find(browser, "browser-state").value


def test_case_browser_opens_a_path_and_says_what_it_cannot_read(demo_data, tmp_path):
    from lungseg_utils import dataio
    from lungseg_utils.scan.browser import CaseBrowser

    folders = dataio.discover_cases(demo_data)
    browser = CaseBrowser({folders[0].name: folders[0]})
    assert browser.open(str(folders[1] / dataio.CT_NAME))          # a NIfTI file: no reference
    assert browser.viewer.mask is None and browser.scan["label"] == dataio.CT_NAME
    shown = browser.viewer
    (tmp_path / "bad.nii.gz").write_bytes(b"not a scan")
    for bad in (tmp_path / "missing.nii.gz", tmp_path / "bad.nii.gz"):
        find(browser, "browser-path").value = str(bad)
        find(browser, "browser-open").click()
        assert browser.viewer is shown                         # the scan shown before stays
        state = find(browser, "browser-state").value
        assert str(bad) in state and "#b00020" in state        # the reason, in red, one line


def test_case_browser_segments_on_demand_with_progress(demo_data):
    from lungseg_utils import dataio
    from lungseg_utils.scan.browser import CaseBrowser, classical_predictor

    folders = dataio.discover_cases(demo_data)
    calls = []

    def predict(ct_hu, affine):
        calls.append(ct_hu.shape)
        return classical_predictor(ct_hu, affine)

    browser = CaseBrowser({folders[0].name: folders[0]}, predict=predict)
    assert calls == [] and find(browser, "browser-progress").value == 0   # nothing predicted yet
    find(browser, "browser-segment").click()
    assert calls == [(64, 64, 64)]
    assert find(browser, "browser-progress").value == find(browser, "browser-progress").max
    assert browser.viewer.pred is not None and browser.viewer._overlay == "errors"
    assert "classical baseline" in find(browser, "browser-state").value


def test_static_render_gets_the_picture():
    """Beside the widget, the display bundle carries the current picture as PNG: what
    ``nbconvert --to html`` shows when no widget can run."""
    import base64

    viewer = SliceViewer(**viewer_case())
    data = viewer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in data
    assert base64.b64decode(data["image/png"]) == viewer.png()
    assert viewer.png().startswith(b"\x89PNG")


def test_the_runs_model_segments_on_demand_with_its_uncertainty(smoke_run, demo_data):
    """predictor_for picks the run's U-Net when the run holds a model (else the classical
    baseline); the prediction has the scan's shape, with the TTA spread beside it."""
    from lungseg_utils import dataio
    from lungseg_utils.scan.browser import CaseBrowser, classical_predictor, predictor_for

    assert predictor_for(smoke_run.parent / "no_such_run") is classical_predictor
    predict = predictor_for(smoke_run)
    assert predict is not classical_predictor
    folder = dataio.discover_cases(demo_data)[0]
    browser = CaseBrowser({folder.name: folder}, predict=predict)
    assert browser.segment()
    assert browser.viewer.pred.shape == browser.scan["ct_hu"].shape
    assert browser.viewer.uncertainty is not None and "uncertainty" in browser.viewer.overlays
    assert "3D U-Net with TTA" in find(browser, "browser-state").value
