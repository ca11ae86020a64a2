"""Figure style and export, and static slice figures (the interactive viewer: :mod:`.viewer`).

Every picture is radiological, whatever the array's axis order (``nib.aff2axcodes(affine)``):
axial and coronal slices show the patient's Right on the image's left, sagittal ones Anterior;
Anterior (axial) or Superior (coronal, sagittal) is at the top. For the course's L, P, S data an
axial slice is ``ct[:, :, k].T``, a coronal one ``ct[:, j, :].T[::-1]`` and a sagittal one
``ct[i, :, :].T[::-1]``. A slice index is always the array index along the sliced axis."""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from pathlib import Path

import matplotlib as mpl
import matplotlib.patheffects as pe
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.patches import Patch
from matplotlib.text import Text
from scipy import ndimage as ndi

from . import config
from .anatomy import boundary
from .atomic import atomic_write
from .errors import LungsegInputError

#: Figure widths in inches: one column and a full page of a two-column report.
COL_IN, PAGE_IN = 3.4, 7.0
#: HU windows (low, high): lung W1500/L-600, mediastinum W350/L40, bone W1800/L400.
WINDOWS = {"lung": (-1350.0, 150.0), "mediastinum": (-135.0, 215.0),
           "bone": (-500.0, 1300.0), "project": tuple(config.HU_WINDOW)}
#: Okabe-Ito colours, readable by colour-blind readers.
ERROR_COLOURS = {"true positive": "#009E73", "false positive": "#D55E00",
                 "false negative": "#56B4E9"}
REF_COLOUR, PRED_COLOUR = "#F0E442", "#CC79A7"
STYLE = {"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "xtick.labelsize": 7,
         "ytick.labelsize": 7, "legend.fontsize": 7, "figure.titlesize": 9, "figure.dpi": 100,
         "figure.figsize": (COL_IN, 0.75 * COL_IN), "savefig.dpi": 300, "axes.linewidth": 0.6,
         "lines.linewidth": 1.0, "axes.spines.top": False, "axes.spines.right": False,
         "legend.frameon": False, "pdf.fonttype": 42,
         "axes.prop_cycle": mpl.cycler(color=["#0072B2", "#D55E00", "#009E73", "#CC79A7",
                                              "#E69F00", "#56B4E9", "#F0E442", "#000000"])}
#: The PNG text chunk in which :func:`export_figure` records :func:`smallest_text_pt`.
MIN_FONT_KEY = "lungseg_min_font_pt"

#: Plane -> world axes (0, 1, 2: x, y, z) of its normal, its rows and its columns; on screen
#: rows run down and columns right toward L, P or I.
PLANES = {"axial": (2, 1, 0), "coronal": (1, 2, 0), "sagittal": (0, 2, 1)}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def apply_style() -> None:
    """Set matplotlib's rc parameters to the project style (8-9 pt text, 300 dpi export)."""
    mpl.rcParams.update(STYLE)


def export_figure(fig, name: str, figures_dir=None) -> list[Path]:
    """Write ``fig`` to ``<figures_dir>/<name>.png`` (300 dpi) and ``<name>.pdf``; return both.

    ``name``: a bare stem such as ``05_dice_paired``; ``figures_dir``: ``config.FIGURES_DIR`` by
    default. Each file is written atomically; the PDF has no creation date (a re-run gives the
    same bytes); the PNG records :func:`smallest_text_pt` under :data:`MIN_FONT_KEY`."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.endswith((".png", ".pdf")):
        raise LungsegInputError(f"export_figure: name {name!r} must be a bare file stem "
                                "such as '05_dice_paired' (no folder, no extension).")
    folder = Path(figures_dir) if figures_dir is not None else config.FIGURES_DIR
    text = {MIN_FONT_KEY: f"{smallest_text_pt(fig):.2f}"}
    for fmt in ("png", "pdf"):
        with atomic_write(folder / f"{name}.{fmt}", overwrite=True) as tmp:
            fig.savefig(tmp, format=fmt, dpi=300, bbox_inches="tight", pad_inches=0.02,
                        metadata={"CreationDate": None} if fmt == "pdf" else text)
    return [folder / f"{name}.png", folder / f"{name}.pdf"]


def smallest_text_pt(fig) -> float:
    """The smallest font size (pt, at the figure's own size) of any text drawn in ``fig``:
    visible, non-empty, on a visible axes and not clipped away; inf if there is none."""
    fig.canvas.draw()           # tick labels exist only once drawn
    sizes = [t.get_fontsize() for t in fig.findobj(Text)
             if t.get_visible() and t.get_text().strip()
             and (t.axes is None or t.axes.get_visible()) and t.get_window_extent().width > 0]
    return float(min(sizes)) if sizes else float("inf")


def paired_plot(ax, values: dict, highlight=None, ylabel="Dice"):
    """One dot per case and method, a line per case across the methods; returns ``ax``.
    ``values``: ``{method label: {case_id: value}}`` in plotting order (same cases in each);
    ``highlight``: a case_id drawn in colour."""
    labels = list(values)
    x = np.arange(len(labels))
    for cid in values[labels[0]]:
        hot = cid == highlight
        ax.plot(x, [values[m][cid] for m in labels], "-o", color="#D55E00" if hot else "0.55",
                lw=1.1 if hot else 0.7, ms=3.2 if hot else 2.4, zorder=3 if hot else 2)
    ax.set_xticks(x, labels, rotation=45, ha="right", rotation_mode="anchor")   # long names
    ax.set_xlim(-0.35, len(labels) - 0.65)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", lw=0.4, color="0.85")
    return ax


def window_limits(window) -> tuple[float, float]:
    """(low, high) HU for a preset name in :data:`WINDOWS` or a (low, high) pair."""
    if isinstance(window, str) and window not in WINDOWS:
        raise LungsegInputError(f"window {window!r} is not one of {', '.join(WINDOWS)}.")
    lo, hi = (float(v) for v in (WINDOWS[window] if isinstance(window, str) else window))
    if not lo < hi:
        raise LungsegInputError(f"window {window!r}: low must be below high.")
    return lo, hi


def plane_name(affine, axis) -> str:
    """'axial', 'coronal' or 'sagittal' for a plane name or an array axis (0, 1, 2)."""
    if axis not in (*PLANES, 0, 1, 2):
        raise LungsegInputError(f"axis {axis!r} is not one of {', '.join(PLANES)} or 0-2.")
    if isinstance(axis, str):
        return axis
    return ("sagittal", "coronal", "axial")[int(nib.io_orientation(affine)[int(axis), 0])]


def slice_plan(affine, axis) -> tuple:
    """(sliced array axis, row array axis, column array axis, flip rows, flip columns)."""
    ornt = nib.io_orientation(affine)   # per array axis: its world axis, +1 if it runs to R, A or S
    world = ornt[:, 0].tolist()
    k, r, c = (world.index(a) for a in PLANES[plane_name(affine, axis)])
    return k, r, c, bool(ornt[r, 1] > 0), bool(ornt[c, 1] > 0)


def slicing_axis(affine, axis) -> int:
    """The array axis along which a plane (or array axis) is sliced."""
    return slice_plan(affine, axis)[0]


def busiest_slice(volume: np.ndarray, affine, axis, near: int | None = None) -> int:
    """Index of the slice of plane ``axis`` (a name or array axis, found from ``affine``)
    holding the most non-zero voxels of ``volume`` (X, Y, Z): the most lung of a mask, the
    most error of an error map. Of equal ones, the nearest to ``near`` (else the first)."""
    k = slicing_axis(affine, axis)
    counts = (np.asarray(volume) != 0).sum(axis=tuple(a for a in range(3) if a != k))
    best = np.flatnonzero(counts == counts.max())
    return int(best[np.argmin(np.abs(best - near))] if near is not None else best[0])


def display_slice(volume: np.ndarray, affine, axis, index: int) -> np.ndarray:
    """Slice ``index`` (array index) of ``volume`` (X, Y, Z) as a 2D view (no copy) in display
    order: rows top to bottom, columns left to right."""
    volume = np.asarray(volume)
    k, r, c, flip_r, flip_c = slice_plan(affine, axis)
    if not 0 <= int(index) < volume.shape[k]:
        raise LungsegInputError(f"slice index {index} is outside 0..{volume.shape[k] - 1}.")
    sl = volume[(slice(None),) * k + (int(index),)]
    sl = sl.T if r > c else sl
    return sl[::-1 if flip_r else 1, ::-1 if flip_c else 1]


def orientation_labels(affine, axis) -> dict:
    """Patient directions at the edges of a displayed slice (the same in any axis order), e.g.
    axial: ``{'left': 'R', 'right': 'L', 'top': 'A', 'bottom': 'P'}``."""
    _, rows, cols = PLANES[plane_name(affine, axis)]
    return dict(left="RAS"[cols], right="LPI"[cols], top="RAS"[rows], bottom="LPI"[rows])


def slice_aspect(spacing_mm, axis, affine=None) -> float:
    """imshow aspect (pixel height / pixel width) of a displayed slice with voxels ``spacing_mm``
    (mm); without ``affine`` the array axes are taken to be in x, y, z order."""
    _, r, c, _, _ = slice_plan(np.eye(4) if affine is None else affine, axis)
    return float(spacing_mm[r]) / float(spacing_mm[c])


def slice_position_mm(affine, shape, axis, index: int) -> float:
    """World coordinate (mm, along the plane's normal) of the centre of slice ``index``."""
    centre = (np.asarray(shape, dtype=float) - 1.0) / 2.0
    centre[slicing_axis(affine, axis)] = index
    world = np.asarray(affine, dtype=float) @ np.append(centre, 1.0)
    return float(world[PLANES[plane_name(affine, axis)][0]])


def mask_rgba(mask2d: np.ndarray, colour, alpha: float, outline: bool = True) -> np.ndarray:
    """float32 (H, W, 4) overlay: ``mask2d > 0`` filled with ``alpha``, its edge opaque."""
    m = np.asarray(mask2d) > 0
    out = np.zeros(m.shape + (4,), np.float32)
    out[m] = (*to_rgb(colour), alpha)
    if outline:
        out[boundary(m, "inner")] = (*to_rgb(colour), 1.0)
    return out


def error_rgba(mask2d: np.ndarray, pred2d: np.ndarray, alpha: float) -> np.ndarray:
    """float32 (H, W, 4): true positives, false positives, false negatives in ERROR_COLOURS."""
    ref, prd = np.asarray(mask2d) > 0, np.asarray(pred2d) > 0
    out = np.zeros(ref.shape + (4,), np.float32)
    for sel, colour in zip((ref & prd, ~ref & prd, ref & ~prd), ERROR_COLOURS.values()):
        out[sel] = (*to_rgb(colour), alpha)
    return out


def heat_rgba(values2d: np.ndarray, alpha: float, vmax: float) -> np.ndarray:
    """float32 (H, W, 4) 'inferno' heat map of ``values2d`` in [0, vmax]; zero is transparent."""
    level = np.clip(np.asarray(values2d, dtype=np.float32) / vmax, 0.0, 1.0)
    out = mpl.colormaps["inferno"](level).astype(np.float32)
    out[..., 3] = alpha * level
    return out


def side_labels(ax, labels: dict) -> dict:
    """Write the orientation letters inside the four edges of ``ax``; return the Texts."""
    spots = dict(left=(0.015, 0.5, "left", "center"), right=(0.985, 0.5, "right", "center"),
                 top=(0.5, 0.985, "center", "top"), bottom=(0.5, 0.015, "center", "bottom"))
    return {side: ax.text(x, y, labels[side], transform=ax.transAxes, ha=ha, va=va,
                          color="white", fontweight="bold",
                          path_effects=[pe.withStroke(linewidth=2, foreground="black")])
            for side, (x, y, ha, va) in spots.items()}


def colour_legend(ax_or_fig, colours: dict, **kw):
    """A one-row legend of coloured patches, ``colours`` = {name: colour}, on an Axes or a
    Figure (``kw``: placement, passed to ``legend``); returns the Legend."""
    handles = [Patch(color=c, label=name) for name, c in colours.items()]
    return ax_or_fig.legend(handles=handles, ncol=len(handles), frameon=False,
                            handlelength=1.0, columnspacing=0.8, **kw)


def show_slice(ax, ct_hu, axis, index, spacing_mm, affine, window=config.HU_WINDOW, mask=None,
               pred=None, overlay="contour", alpha=0.4, labels=True, pred_name="prediction"):
    """Draw slice ``index`` of ``ct_hu`` (X, Y, Z) on ``ax``, radiological; returns ``ax``.

    ``overlay``: 'contour' (outlines of ``mask`` and ``pred``), 'fill' (translucent areas),
    'errors' (true positive / false positive / false negative, with a legend; needs both) or
    'none'. ``window``: (low, high) HU or a preset name; ``pred_name``: ``pred``'s legend label."""
    kw = dict(aspect=slice_aspect(spacing_mm, axis, affine), interpolation="nearest")
    cut = lambda vol: display_slice(vol, affine, axis, index)  # noqa: E731
    lo, hi = window_limits(window)
    ax.imshow(cut(ct_hu), cmap="gray", vmin=lo, vmax=hi, **kw)
    layers = {n: (m, c) for n, m, c in (("reference", mask, REF_COLOUR),
                                        (pred_name, pred, PRED_COLOUR)) if m is not None}
    below = dict(loc="upper center", bbox_to_anchor=(0.5, 0.0))
    if overlay == "errors":
        if len(layers) < 2:
            raise LungsegInputError("show_slice: overlay='errors' needs both mask and pred.")
        ax.imshow(error_rgba(cut(mask), cut(pred), alpha), **kw)
        colour_legend(ax, ERROR_COLOURS, **below)
    elif overlay in ("contour", "fill"):
        for m, colour in layers.values():
            m2d = cut(m) > 0
            if overlay == "fill":
                ax.imshow(mask_rgba(m2d, colour, alpha, outline=False), **kw)
            elif m2d.any() and not m2d.all():
                ax.contour(m2d.astype(np.float32), levels=[0.5], colors=[colour], linewidths=0.8)
        if len(layers) == 2:
            colour_legend(ax, {n: c for n, (_, c) in layers.items()}, **below)
    elif overlay not in (None, "none"):
        raise LungsegInputError(f"show_slice: overlay {overlay!r} is not one of "
                                "'contour', 'fill', 'errors', 'none'.")
    if labels:
        side_labels(ax, orientation_labels(affine, axis))
    ax.set_axis_off()
    return ax


def montage_three_planes(ct_hu, mask, spacing_mm, affine, title=None):
    """Axial and coronal slices through the centre of ``mask``, the sagittal slice with the most
    of it (a lung, not the mediastinum), with its outline; returns the Figure, a page wide, its
    panels as wide as each slice is in mm so that the three share one height."""
    shape = np.shape(ct_hu)
    has_mask = mask is not None and np.any(mask)
    centre = (np.round(ndi.center_of_mass(np.asarray(mask) > 0)).astype(int) if has_mask
              else np.asarray(shape) // 2)
    index = {p: int(centre[slicing_axis(affine, p)]) for p in PLANES}
    if has_mask:
        index["sagittal"] = busiest_slice(mask, affine, "sagittal", near=index["sagittal"])
    ratios = [display_slice(ct_hu, affine, p, i).shape[::-1] for p, i in index.items()]
    ratios = [w / (h * slice_aspect(spacing_mm, p, affine)) for (w, h), p in zip(ratios, PLANES)]
    fig, axes = plt.subplots(1, 3, figsize=(PAGE_IN, PAGE_IN / sum(ratios) + 0.45),
                             gridspec_kw=dict(width_ratios=ratios, wspace=0.04))
    for ax, (plane, i) in zip(axes, index.items()):
        show_slice(ax, ct_hu, plane, i, spacing_mm, affine, window="lung", mask=mask)
        pos = slice_position_mm(affine, shape, plane, i)
        ax.set_title(f"{plane}, {'xyz'[PLANES[plane][0]]} = {pos:.0f} mm")
    if title:
        fig.suptitle(title)
    return fig


def show_code(obj, docstring: bool = False):
    """The source of a function or class (``inspect.getsource``) as a Python code block that a
    notebook displays (``IPython.display.Markdown``), headed by a comment naming where it lives;
    without its docstring unless ``docstring``."""
    from IPython.display import Markdown
    try:
        source = textwrap.dedent(inspect.getsource(obj))
    except (TypeError, OSError) as exc:
        raise LungsegInputError(f"show_code: no source to show for {obj!r} ({exc}).") from None
    node = ast.parse(source).body[0]
    if not docstring and ast.get_docstring(node) is not None and len(node.body) > 1:
        doc, lines = node.body[0], source.splitlines()
        after = doc.end_lineno + (not lines[doc.end_lineno].strip())  # and its blank line
        source = "\n".join(lines[:doc.lineno - 1] + lines[after:])
    return Markdown(f"```python\n# {obj.__module__}.{obj.__qualname__}\n{source.rstrip()}\n```")
