"""lungseg_utils.viz: figure export, style, the radiological display convention in all 48
orientations, and the static slice figures (the interactive viewer: tests/test_viewer.py).

No browser is needed (run with MPLBACKEND=Agg); arrays are small and built here.
"""

import itertools

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from lungseg_utils import config, viz
from lungseg_utils.errors import LungsegInputError
from _shared import SPACING, lps_affine, viewer_case

CONVENTION = {"axial": dict(left="R", right="L", top="A", bottom="P"),
              "coronal": dict(left="R", right="L", top="S", bottom="I"),
              "sagittal": dict(left="A", right="P", top="S", bottom="I")}


@pytest.fixture
def case():
    return viewer_case()


# -- export and style -------------------------------------------------------------------------
def test_export_figure_writes_png_300dpi_and_reproducible_pdf(tmp_path):
    fig, ax = plt.subplots(figsize=(viz.COL_IN, 2.0))
    ax.plot([0, 1], [0, 1])
    paths = viz.export_figure(fig, "05_dice_boxplot", figures_dir=tmp_path)
    assert [p.name for p in paths] == ["05_dice_boxplot.png", "05_dice_boxplot.pdf"]
    with Image.open(paths[0]) as png:
        assert png.info["dpi"] == pytest.approx((300, 300), abs=0.1)
        assert png.size[0] == pytest.approx(viz.COL_IN * 300, rel=0.1)
    pdf = paths[1].read_bytes()
    assert pdf.startswith(b"%PDF") and b"CreationDate" not in pdf
    first = [p.read_bytes() for p in paths]
    viz.export_figure(fig, "05_dice_boxplot", figures_dir=tmp_path)
    assert [p.read_bytes() for p in paths] == first          # re-runs give identical files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["05_dice_boxplot.pdf",
                                                          "05_dice_boxplot.png"]
    plt.close(fig)


def test_export_figure_defaults_to_config_figures_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "FIGURES_DIR", tmp_path / "figures")
    fig = plt.figure(figsize=(1, 1))
    assert viz.export_figure(fig, "x")[0] == tmp_path / "figures" / "x.png"
    plt.close(fig)


@pytest.mark.parametrize("name", ["a/b", "fig.png", "", ".hidden", "x y"])
def test_export_figure_rejects_bad_names(tmp_path, name):
    fig = plt.figure()
    with pytest.raises(LungsegInputError, match="name"):
        viz.export_figure(fig, name, figures_dir=tmp_path)
    plt.close(fig)


def test_apply_style_sets_print_sizes():
    with mpl.rc_context():
        mpl.rcdefaults()
        assert mpl.rcParams["font.size"] == 10.0 and mpl.rcParams["pdf.fonttype"] == 3
        viz.apply_style()
        assert 8 <= mpl.rcParams["font.size"] <= 9
        assert mpl.rcParams["savefig.dpi"] == 300
        assert mpl.rcParams["pdf.fonttype"] == 42                  # text stays text in PDFs
        assert mpl.rcParams["figure.figsize"] == [viz.COL_IN, 0.75 * viz.COL_IN]


def test_window_limits():
    # lung W1500/L-600, mediastinum W350/L40 (width and level of the radiology presets)
    for name, (width, level) in {"lung": (1500, -600), "mediastinum": (350, 40)}.items():
        lo, hi = viz.window_limits(name)
        assert (hi - lo, (hi + lo) / 2) == (width, level)
    assert viz.window_limits("project") == (-1000.0, 300.0)
    assert viz.window_limits((-100, 100)) == (-100.0, 100.0)
    with pytest.raises(LungsegInputError, match="not one of"):
        viz.window_limits("brain")
    with pytest.raises(LungsegInputError, match="below"):
        viz.window_limits((100, -100))


# -- orientation ------------------------------------------------------------------------------
def all_orientations(spacing=(1.0, 2.0, 3.0)):
    """The 48 axis-aligned affines: every permutation of world axes, every sign."""
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            aff = np.eye(4)
            aff[:3, :3] = 0.0
            for k in range(3):
                aff[perm[k], k] = signs[k] * spacing[k]
            aff[:3, 3] = (-20.0, 30.0, 5.0)
            yield aff


@pytest.mark.parametrize("affine", list(all_orientations()), ids=lambda a: "".join(
    __import__("nibabel").aff2axcodes(a)))
def test_markers_land_on_the_radiological_side_in_all_48_orientations(affine):
    """Voxels at the patient's Right, Anterior and Superior half show up where they should."""
    shape = (8, 6, 10)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    centre = affine[:3, :3] @ ((np.array(shape) - 1) / 2) + affine[:3, 3]
    # RAS+ world: +x is the patient's Right, +y Anterior, +z Superior.
    vol = sum(bit * (world[..., ax] > centre[ax]) for bit, ax in ((1, 0), (2, 1), (4, 2)))
    expect = {"axial": (1, 2), "coronal": (1, 4), "sagittal": (2, 4)}  # (left bit, top bit)
    for plane, (left_bit, top_bit) in expect.items():
        k = viz.slicing_axis(affine, plane)
        img = viz.display_slice(vol, affine, plane, shape[k] // 2)
        h, w = img.shape
        assert np.all(img[:, : w // 2] & left_bit) and not np.any(img[:, w // 2:] & left_bit)
        assert np.all(img[: h // 2] & top_bit) and not np.any(img[h // 2:] & top_bit)
        assert viz.orientation_labels(affine, plane) == CONVENTION[plane]
        assert viz.plane_name(affine, k) == plane


def test_lps_slices_match_the_documented_recipe():
    vol = np.random.default_rng(0).normal(size=(5, 6, 7))
    aff = lps_affine()
    np.testing.assert_array_equal(viz.display_slice(vol, aff, "axial", 3), vol[:, :, 3].T)
    np.testing.assert_array_equal(viz.display_slice(vol, aff, "coronal", 2), vol[:, 2, :].T[::-1])
    np.testing.assert_array_equal(viz.display_slice(vol, aff, "sagittal", 1), vol[1].T[::-1])


def test_orientation_labels_for_permuted_flipped_and_oblique_affines():
    ras = np.diag([2.0, 2.0, 2.0, 1.0])
    assert viz.orientation_labels(ras, "axial") == CONVENTION["axial"]
    # Array axes (S, R, A) and (I, P, L): axis 0 is the axial axis in both.
    sra = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]])
    ipl = np.array([[0, 0, -1, 0], [0, -1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 1.0]])
    for aff in (sra, ipl):
        assert viz.plane_name(aff, 0) == "axial" and viz.slicing_axis(aff, "axial") == 0
        for plane in CONVENTION:
            assert viz.orientation_labels(aff, plane) == CONVENTION[plane]
    t = np.deg2rad(10)
    oblique = lps_affine()
    oblique[:3, :3] = oblique[:3, :3] @ np.array([[np.cos(t), -np.sin(t), 0],
                                                  [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    assert viz.orientation_labels(oblique, 2) == CONVENTION["axial"]
    with pytest.raises(LungsegInputError):
        viz.plane_name(ras, "transverse")


def test_slice_aspect_for_anisotropic_voxels():
    aff = lps_affine()
    assert viz.slice_aspect(SPACING, "axial", aff) == pytest.approx(2.0 / 1.5)
    assert viz.slice_aspect(SPACING, "coronal", aff) == pytest.approx(3.0 / 1.5)
    assert viz.slice_aspect(SPACING, "sagittal", aff) == pytest.approx(3.0 / 2.0)
    assert viz.slice_aspect(SPACING, 2) == pytest.approx(2.0 / 1.5)   # no affine: x, y, z order


# -- static figures ---------------------------------------------------------------------------
def test_show_slice_overlays_and_legends(case):
    fig, axes = plt.subplots(1, 3)
    args = (case["ct_hu"], "axial", 10, SPACING, case["affine"])
    viz.show_slice(axes[0], *args, mask=case["mask"], pred=case["pred"], overlay="errors")
    labels = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert labels == list(viz.ERROR_COLOURS)
    viz.show_slice(axes[1], *args, window="lung", mask=case["mask"], pred=case["pred"])
    assert [t.get_text() for t in axes[1].get_legend().get_texts()] == ["reference", "prediction"]
    viz.show_slice(axes[2], *args, mask=case["mask"], overlay="fill")
    assert {t.get_text() for t in axes[2].texts} == {"R", "L", "A", "P"}
    with pytest.raises(LungsegInputError, match="needs both"):
        viz.show_slice(axes[2], *args, mask=case["mask"], overlay="errors")
    with pytest.raises(LungsegInputError, match="overlay"):
        viz.show_slice(axes[2], *args, mask=case["mask"], overlay="outline")
    plt.close(fig)


def test_montage_three_planes_goes_through_the_mask_centre(case):
    fig = viz.montage_three_planes(case["ct_hu"], case["mask"], SPACING, case["affine"],
                                   title="phantom")
    titles = [ax.get_title() for ax in fig.axes]
    # Mask centre (13.5, 10.5, 9.5) rounds to voxel (14, 10, 10): x = 100 - 1.5 * 14,
    # y = 50 - 2 * 10, z = -200 + 3 * 10.
    assert titles == ["axial, z = -170 mm", "coronal, y = 30 mm", "sagittal, x = 79 mm"]
    plt.close(fig)


def test_busiest_slice_follows_the_anatomy_not_the_storage_order():
    """The axial slice with the most mask is found in any axis order (the same world z),
    and of equal slices the one nearest ``near``."""
    from lungseg_utils.study.robustness import reorient

    mask = np.zeros((12, 10, 8), np.uint8)
    mask[2:9, 3:7, 5] = 1                       # axial slice 5 holds the most
    mask[4:6, 4:6, 1:5] = 1
    aff = lps_affine()
    z_world = (aff @ [0, 0, viz.busiest_slice(mask, aff, "axial"), 1])[2]
    assert viz.busiest_slice(mask, aff, "axial") == 5
    for codes in ("RAS", "SLA", "IPR"):
        m2, a2 = reorient(mask, aff, codes)
        k = viz.busiest_slice(m2, a2, "axial")
        voxel = [0, 0, 0]
        voxel[viz.slicing_axis(a2, "axial")] = k
        assert (a2 @ [*voxel, 1])[2] == pytest.approx(z_world), codes
    box = np.zeros((6, 6, 6), np.uint8)
    box[1:5, 1:5, 1:5] = 1                      # four equal axial slices: 1..4
    assert viz.busiest_slice(box, lps_affine(), "axial") == 1
    assert viz.busiest_slice(box, lps_affine(), "axial", near=4) == 4
