"""Figure style and export, static slice figures, and the interactive slice viewer.

Display convention (radiological), for every picture in the project:

- axial: patient's Right on the image's left, Anterior at the top;
- coronal: patient's Right on the image's left, Superior at the top;
- sagittal: Anterior on the image's left, Superior at the top.

How any of the 48 axis orientations is brought to it: nibabel's world is RAS+ and
``nib.aff2axcodes(affine)`` names, for each array axis, the patient direction its index runs
toward (the course data: ``('L', 'P', 'S')``). Image columns must run toward the patient's
Left (sagittal: Posterior) and image rows must run down toward Posterior (axial) or Inferior
(coronal, sagittal). So :func:`display_slice` (1) slices along the array axis whose code lies on
the plane's normal, (2) transposes the slice if the rows' array axis comes after the columns'
one, and (3) flips rows and columns whose code points the other way. For L, P, S data an axial
slice is ``ct[:, :, k].T``, a coronal one ``ct[:, j, :].T[::-1]`` and a sagittal one
``ct[i, :, :].T[::-1]``. A slice index is always the array index along the sliced axis.
"""

from __future__ import annotations

import functools
import io as _io
import os
import re
import tempfile
import time
from pathlib import Path

import matplotlib as mpl
import matplotlib.patheffects as pe
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize, to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image
from scipy import ndimage as ndi

from . import config
from .config import HU_WINDOW
from .errors import LungsegInputError
from .io import publish, spacing_from_affine

#: Figure widths in inches: one column and a full page of a two-column report.
COL_IN, PAGE_IN = 3.4, 7.0
#: HU windows (low, high): lung W1500/L-600, mediastinum W350/L40, bone W1800/L400.
WINDOWS = {"lung": (-1350.0, 150.0), "mediastinum": (-135.0, 215.0),
           "bone": (-500.0, 1300.0), "project": tuple(HU_WINDOW)}
#: Okabe-Ito colours, readable by colour-blind readers.
ERROR_COLOURS = {"true positive": "#009E73", "false positive": "#D55E00",
                 "false negative": "#56B4E9"}
REF_COLOUR, PRED_COLOUR = "#F0E442", "#CC79A7"
OVERLAYS = ("none", "reference", "prediction", "errors", "uncertainty")
STYLE = {
    "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "xtick.labelsize": 7,
    "ytick.labelsize": 7, "legend.fontsize": 7, "figure.titlesize": 9, "figure.dpi": 100,
    "figure.figsize": (COL_IN, 0.75 * COL_IN), "savefig.dpi": 300, "axes.linewidth": 0.6,
    "lines.linewidth": 1.0, "axes.spines.top": False, "axes.spines.right": False,
    "legend.frameon": False, "pdf.fonttype": 42,
    "axes.prop_cycle": mpl.cycler(color=["#0072B2", "#D55E00", "#009E73", "#CC79A7",
                                         "#E69F00", "#56B4E9", "#F0E442", "#000000"])}

# Plane -> (world axis of its normal, code the columns run toward, code the rows run down to).
_PLANES = {"axial": (2, "L", "P"), "coronal": (1, "L", "I"), "sagittal": (0, "P", "I")}
_CODE_AXIS = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}
_OPPOSITE = dict(R="L", L="R", A="P", P="A", S="I", I="S")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def apply_style() -> None:
    """Set matplotlib's rc parameters to the project style (8-9 pt text, 300 dpi export)."""
    mpl.rcParams.update(STYLE)


def export_figure(fig, name: str, figures_dir=None, dpi: int = 300) -> list[Path]:
    """Write ``fig`` to ``<figures_dir>/<name>.png`` (``dpi``) and ``<name>.pdf``; return both.

    ``name`` is a bare stem such as ``05_dice_boxplot``; ``figures_dir`` defaults to
    ``config.FIGURES_DIR``. Each file goes to a temporary name in the same folder and is then
    renamed (a crash never leaves half a figure); the PDF carries no creation date, so a
    re-run gives byte-identical files.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.endswith((".png", ".pdf")):
        raise LungsegInputError(f"export_figure: name {name!r} must be a bare file stem "
                                "such as '05_dice_boxplot' (no folder, no extension).")
    folder = Path(figures_dir) if figures_dir is not None else config.FIGURES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in ("png", "pdf"):
        fd, tmp = tempfile.mkstemp(prefix=f".tmp_{name}_", suffix=f".{fmt}", dir=folder)
        os.close(fd)
        try:
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight", pad_inches=0.02,
                        metadata={"CreationDate": None} if fmt == "pdf" else None)
            publish(tmp, folder / f"{name}.{fmt}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        written.append(folder / f"{name}.{fmt}")
    return written


def window_limits(window) -> tuple[float, float]:
    """(low, high) HU for a preset name in :data:`WINDOWS` or a (low, high) pair."""
    if isinstance(window, str) and window not in WINDOWS:
        raise LungsegInputError(f"window {window!r} is not one of {', '.join(WINDOWS)}.")
    lo, hi = (float(v) for v in (WINDOWS[window] if isinstance(window, str) else window))
    if not lo < hi:
        raise LungsegInputError(f"window {window!r}: low must be below high.")
    return lo, hi


def _codes(affine) -> tuple:
    return tuple(nib.aff2axcodes(np.asarray(affine, dtype=float)))


def plane_name(affine, axis) -> str:
    """'axial', 'coronal' or 'sagittal' for a plane name or an array axis (0, 1, 2)."""
    if axis not in (*_PLANES, 0, 1, 2):
        raise LungsegInputError(f"axis {axis!r} is not one of {', '.join(_PLANES)} or 0-2.")
    if isinstance(axis, str):
        return axis
    return {0: "sagittal", 1: "coronal", 2: "axial"}[_CODE_AXIS[_codes(affine)[int(axis)]]]


def _plan(affine, axis) -> tuple:
    """(sliced array axis, row array axis, column array axis, flip rows, flip columns)."""
    codes = _codes(affine)
    normal, col_code, row_code = _PLANES[plane_name(affine, axis)]
    world = [_CODE_AXIS[c] for c in codes]
    r, c = world.index(_CODE_AXIS[row_code]), world.index(_CODE_AXIS[col_code])
    return world.index(normal), r, c, codes[r] != row_code, codes[c] != col_code


def slicing_axis(affine, axis) -> int:
    """The array axis along which a plane (or array axis) is sliced."""
    return _plan(affine, axis)[0]


def display_slice(volume: np.ndarray, affine, axis, index: int) -> np.ndarray:
    """Slice ``index`` (array index) of ``volume`` (X, Y, Z) in display order.

    Returns a 2D view (rows top to bottom, columns left to right) in the module's
    radiological convention, whatever the orientation of ``affine``.
    """
    volume = np.asarray(volume)
    k, r, c, flip_r, flip_c = _plan(affine, axis)
    if not 0 <= int(index) < volume.shape[k]:
        raise LungsegInputError(f"slice index {index} is outside 0..{volume.shape[k] - 1}.")
    sl = volume[(slice(None),) * k + (int(index),)]     # a view: no copy
    sl = sl.T if r > c else sl
    return sl[::-1 if flip_r else 1, ::-1 if flip_c else 1]


def orientation_labels(affine, axis) -> dict:
    """Patient directions at the edges of a displayed slice: dict(left=, right=, top=, bottom=).

    Read from ``affine`` through the same plan as :func:`display_slice`; axial gives
    ``{'left': 'R', 'right': 'L', 'top': 'A', 'bottom': 'P'}``.
    """
    codes = _codes(affine)
    _, r, c, flip_r, flip_c = _plan(affine, axis)
    right = _OPPOSITE[codes[c]] if flip_c else codes[c]
    bottom = _OPPOSITE[codes[r]] if flip_r else codes[r]
    return dict(left=_OPPOSITE[right], right=right, top=_OPPOSITE[bottom], bottom=bottom)


def slice_aspect(spacing_mm, axis, affine=None) -> float:
    """imshow aspect (pixel height / pixel width) of a displayed slice with voxels ``spacing_mm``.

    Without ``affine`` the array axes are taken to be in x, y, z order (as in L, P, S data).
    """
    affine = np.diag([*(float(s) for s in spacing_mm), 1.0]) if affine is None else affine
    _, r, c, _, _ = _plan(affine, axis)
    return float(spacing_mm[r]) / float(spacing_mm[c])


def slice_position_mm(affine, shape, axis, index: int) -> float:
    """World coordinate (mm, along the plane's normal) of the centre of slice ``index``."""
    centre = (np.asarray(shape, dtype=float) - 1.0) / 2.0
    centre[slicing_axis(affine, axis)] = index
    world = np.asarray(affine, dtype=float) @ np.append(centre, 1.0)
    return float(world[_PLANES[plane_name(affine, axis)][0]])


def mask_rgba(mask2d: np.ndarray, colour, alpha: float, outline: bool = True) -> np.ndarray:
    """float32 (H, W, 4) overlay: ``mask2d > 0`` filled with ``alpha``, its edge opaque."""
    m = np.asarray(mask2d) > 0
    out = np.zeros(m.shape + (4,), np.float32)
    out[m] = (*to_rgb(colour), alpha)
    if outline:
        out[m & ~ndi.binary_erosion(m)] = (*to_rgb(colour), 1.0)
    return out


def error_rgba(mask2d: np.ndarray, pred2d: np.ndarray, alpha: float) -> np.ndarray:
    """float32 (H, W, 4): true positives, false positives, false negatives in ERROR_COLOURS."""
    ref, prd = np.asarray(mask2d) > 0, np.asarray(pred2d) > 0
    out = np.zeros(ref.shape + (4,), np.float32)
    for sel, colour in zip((ref & prd, ~ref & prd, ref & ~prd), ERROR_COLOURS.values()):
        out[sel] = (*to_rgb(colour), alpha)
    return out


def heat_rgba(values2d: np.ndarray, alpha: float, vmax: float, cmap: str = "inferno") -> np.ndarray:
    """float32 (H, W, 4) heat map of ``values2d`` in [0, vmax]; zero is fully transparent."""
    level = np.clip(np.asarray(values2d, dtype=np.float32) / max(float(vmax), 1e-6), 0.0, 1.0)
    out = mpl.colormaps[cmap](level).astype(np.float32)
    out[..., 3] = alpha * level
    return out


def _side_labels(ax, labels: dict) -> dict:
    """Write the orientation letters inside the four edges of ``ax``; return the Texts."""
    spots = dict(left=(0.015, 0.5, "left", "center"), right=(0.985, 0.5, "right", "center"),
                 top=(0.5, 0.985, "center", "top"), bottom=(0.5, 0.015, "center", "bottom"))
    return {side: ax.text(x, y, labels[side], transform=ax.transAxes, ha=ha, va=va,
                          color="white", fontweight="bold",
                          path_effects=[pe.withStroke(linewidth=2, foreground="black")])
            for side, (x, y, ha, va) in spots.items()}


def _legend(ax_or_fig, colours: dict, **kw):
    handles = [Patch(color=c, label=name) for name, c in colours.items()]
    return ax_or_fig.legend(handles=handles, ncol=len(handles), frameon=False,
                            handlelength=1.0, columnspacing=0.8, **kw)


def show_slice(ax, ct_hu, axis, index, spacing_mm, affine, window=HU_WINDOW, mask=None,
               pred=None, overlay="contour", alpha=0.4, labels=True):
    """Draw one CT slice on ``ax`` in the radiological convention, with an optional overlay.

    ``overlay``: 'contour' (outlines of ``mask`` and ``pred``), 'fill' (translucent areas),
    'errors' (true positive / false positive / false negative in three colours, with a
    legend; needs both) or 'none'. ``window``: a (low, high) HU pair or a preset name.
    ``spacing_mm`` may be None (read from ``affine``). Returns ``ax``.
    """
    affine = np.asarray(affine, dtype=float)
    spacing_mm = spacing_from_affine(affine) if spacing_mm is None else spacing_mm
    kw = dict(aspect=slice_aspect(spacing_mm, axis, affine), interpolation="nearest")
    cut = lambda vol: display_slice(vol, affine, axis, index)  # noqa: E731
    lo, hi = window_limits(window)
    ax.imshow(cut(ct_hu), cmap="gray", vmin=lo, vmax=hi, **kw)
    layers = {n: (m, c) for n, m, c in (("reference", mask, REF_COLOUR),
                                        ("prediction", pred, PRED_COLOUR)) if m is not None}
    below = dict(loc="upper center", bbox_to_anchor=(0.5, 0.0))
    if overlay == "errors":
        if len(layers) < 2:
            raise LungsegInputError("show_slice: overlay='errors' needs both mask and pred.")
        ax.imshow(error_rgba(cut(mask), cut(pred), alpha), **kw)
        _legend(ax, ERROR_COLOURS, **below)
    elif overlay in ("contour", "fill"):
        for m, colour in layers.values():
            m2d = cut(m) > 0
            if overlay == "fill":
                ax.imshow(mask_rgba(m2d, colour, alpha, outline=False), **kw)
            elif m2d.any() and not m2d.all():
                ax.contour(m2d.astype(np.float32), levels=[0.5], colors=[colour], linewidths=0.8)
        if len(layers) == 2:
            _legend(ax, {n: c for n, (_, c) in layers.items()}, **below)
    elif overlay not in (None, "none"):
        raise LungsegInputError(f"show_slice: overlay {overlay!r} is not one of "
                                "'contour', 'fill', 'errors', 'none'.")
    if labels:
        _side_labels(ax, orientation_labels(affine, axis))
    ax.set_axis_off()
    return ax


def montage_three_planes(ct_hu, mask, spacing_mm, affine, title=None, window="lung",
                         pred=None, overlay="contour", width_in=PAGE_IN):
    """Axial, coronal and sagittal slices through the centre of ``mask``; returns the Figure.

    Panel widths follow each slice's size in mm, so that the three share one height.
    """
    affine, shape = np.asarray(affine, dtype=float), np.shape(ct_hu)
    has_mask = mask is not None and np.any(mask)
    centre = (np.round(ndi.center_of_mass(np.asarray(mask) > 0)).astype(int) if has_mask
              else np.asarray(shape) // 2)
    index = {p: int(centre[slicing_axis(affine, p)]) for p in _PLANES}
    ratios = [display_slice(ct_hu, affine, p, i).shape[::-1] for p, i in index.items()]
    ratios = [w / (h * slice_aspect(spacing_mm, p, affine)) for (w, h), p in zip(ratios, _PLANES)]
    fig, axes = plt.subplots(1, 3, figsize=(width_in, width_in / sum(ratios) + 0.45),
                             gridspec_kw=dict(width_ratios=ratios, wspace=0.04))
    for ax, (plane, i) in zip(axes, index.items()):
        show_slice(ax, ct_hu, plane, i, spacing_mm, affine, window=window, mask=mask, pred=pred,
                   overlay=overlay)
        pos = slice_position_mm(affine, shape, plane, i)
        ax.set_title(f"{plane}, {'xyz'[_PLANES[plane][0]]} = {pos:.0f} mm")
    for ax in (axes[0], axes[2]):   # one legend, under the middle panel
        if ax.get_legend():
            ax.get_legend().remove()
    if title:
        fig.suptitle(title)
    return fig


def _redraws(method):
    """Run a viewer method with widget callbacks held, then redraw once."""
    @functools.wraps(method)
    def wrapper(self, *args):
        self._holding += 1
        try:
            method(self, *args)
        finally:
            self._holding -= 1
        self._redraw()
    return wrapper


class SliceViewer:
    """Interactive viewer of a CT with masks in three planes (matplotlib + ipywidgets).

    One Agg figure is built once; a redraw only updates its images with ``set_data`` and sends
    the rendered PNG to an ``ipywidgets.Image``, so it works in JupyterLab, Notebook 7 and
    Voila with no extra package. Arrays are (X, Y, Z) on the grid of ``affine``: ``mask`` and
    ``pred`` binary, ``uncertainty`` >= 0 (e.g. the TTA standard deviation).
    """

    def __init__(self, ct_hu, affine, mask=None, pred=None, uncertainty=None, title="",
                 figures_dir=None):
        import ipywidgets as w

        self.ct_hu, self.affine = np.asarray(ct_hu, np.float32), np.asarray(affine, float)
        if self.ct_hu.ndim != 3 or self.affine.shape != (4, 4):
            raise LungsegInputError("SliceViewer: ct_hu must be 3D and affine 4x4.")
        for name, arr in (("mask", mask), ("pred", pred), ("uncertainty", uncertainty)):
            if arr is not None and np.shape(arr) != self.ct_hu.shape:
                raise LungsegInputError(f"SliceViewer: {name} has shape {np.shape(arr)}, "
                                        f"the CT {self.ct_hu.shape}.")
        self.mask, self.pred, self.uncertainty = mask, pred, uncertainty
        self.spacing_mm = spacing_from_affine(self.affine)
        self.title, self.figures_dir = title, figures_dir
        self.redraw_seconds, self._holding = float("nan"), 0
        self._u_max = max(float(np.max(uncertainty)), 1e-6) if uncertainty is not None else 1.0
        self._index = {p: self._n_slices(p) // 2 for p in _PLANES}
        self._axis, self._window, self._alpha, self._side = "axial", WINDOWS["lung"], 0.4, False
        given = dict(reference=mask, prediction=pred, uncertainty=uncertainty,
                     errors=None if mask is None else pred)
        self.overlays = ["none"] + [o for o in OVERLAYS[1:] if given[o] is not None]
        self._overlay = "reference" if mask is not None else "none"
        self._build_figure()

        self._log = w.Output()
        self._w_image = w.Image(format="png", layout=w.Layout(align_self="flex-start"))
        self._w_readout, self._w_status = w.HTML(), w.HTML()
        self._w_axis = w.ToggleButtons(options=list(_PLANES), description="plane")
        self._w_slice = w.IntSlider(value=self._index["axial"], max=self._n_slices("axial") - 1,
                                    description="slice", layout=w.Layout(width="480px"))
        self._w_overlay = w.Dropdown(options=self.overlays, value=self._overlay,
                                     description="overlay")
        self._w_side = w.ToggleButton(description="side by side",
                                      disabled=mask is None or pred is None)
        self._w_preset = w.Dropdown(options=[*WINDOWS, "custom"], value="lung",
                                    description="window")
        self._w_width = w.IntSlider(value=1500, min=10, max=4000, step=10, description="W")
        self._w_level = w.IntSlider(value=-600, min=-1200, max=1500, step=10, description="L")
        self._w_alpha = w.FloatSlider(value=self._alpha, max=1.0, step=0.05, description="opacity")
        self._w_export = w.Button(description="export figure", icon="download")
        for name in ("axis", "slice", "overlay", "side", "preset", "image", "readout", "export",
                     "status"):
            getattr(self, f"_w_{name}").add_class(f"lungseg-{name}")
        actions = {self._w_axis: self.set_axis, self._w_slice: self.set_slice,
                   self._w_overlay: self.set_overlay, self._w_side: self.set_side_by_side,
                   self._w_preset: lambda v: v == "custom" or self.set_window(v),
                   self._w_width: lambda v: self.set_window(self._width_level()),
                   self._w_level: lambda v: self.set_window(self._width_level()),
                   self._w_alpha: self.set_opacity}
        for widget, act in actions.items():   # errors raised in callbacks show up in self._log
            widget.observe(self._log.capture()(lambda ch, act=act: self._holding or act(ch["new"])),
                           names="value")
        self._w_export.on_click(self._log.capture()(lambda _: self.export()))
        self.widget = w.VBox([
            w.HTML(f"<b>{title}</b>"), w.HBox([self._w_axis, self._w_overlay, self._w_side]),
            self._w_slice, w.HBox([self._w_preset, self._w_width, self._w_level]), self._w_alpha,
            self._w_image, self._w_readout, w.HBox([self._w_export, self._w_status]), self._log])
        self._redraw()

    def _n_slices(self, plane) -> int:
        return self.ct_hu.shape[slicing_axis(self.affine, plane)]

    def _width_level(self) -> tuple[float, float]:
        width, level = self._w_width.value, self._w_level.value
        return level - width / 2, level + width / 2

    def _build_figure(self):
        with mpl.rc_context(STYLE):
            self._fig = Figure(figsize=(5.0, 5.0), dpi=100)
            FigureCanvasAgg(self._fig)
            self.axes = [self._fig.add_axes((0.01, 0.11, 0.98, 0.82)) for _ in range(2)]
            self._ct_im = [ax.imshow(np.zeros((2, 2)), cmap="gray", interpolation="nearest")
                           for ax in self.axes]
            self._ov_im = [ax.imshow(np.zeros((2, 2, 4)), interpolation="nearest")
                           for ax in self.axes]
            self._labels = [_side_labels(ax, dict.fromkeys(("left", "right", "top", "bottom"), ""))
                            for ax in self.axes]
            for ax in self.axes:
                ax.set_axis_off()
            self._legend = _legend(self._fig, ERROR_COLOURS, loc="lower center",
                                   bbox_to_anchor=(0.5, 0.01))
            self._cax = self._fig.add_axes((0.35, 0.05, 0.4, 0.025))
            self._fig.colorbar(mpl.cm.ScalarMappable(Normalize(0, self._u_max), "inferno"),
                               cax=self._cax, orientation="horizontal")
            self._cax.set_ylabel("uncertainty", rotation=0, ha="right", va="center")
            self._suptitle = self._fig.suptitle("")

    def _panel_overlay(self, overlay: str, cut) -> np.ndarray:
        if overlay in ("reference", "prediction"):
            return mask_rgba(cut(self.mask if overlay == "reference" else self.pred),
                             REF_COLOUR if overlay == "reference" else PRED_COLOUR, self._alpha)
        if overlay == "errors":
            return error_rgba(cut(self.mask), cut(self.pred), self._alpha)
        if overlay == "uncertainty":
            return heat_rgba(cut(self.uncertainty), self._alpha, self._u_max)
        return np.zeros(cut(self.ct_hu).shape + (4,), np.float32)

    def _redraw(self):
        t0 = time.perf_counter()
        plane, index = self._axis, self._index[self._axis]
        cut = lambda vol: display_slice(vol, self.affine, plane, index)  # noqa: E731
        ct2d, labels = cut(self.ct_hu), orientation_labels(self.affine, plane)
        side = self._side and not self._w_side.disabled
        panels = ["reference", "prediction"] if side else [self._overlay]
        self._fig.set_size_inches(9.0 if side else 5.0, 5.0)
        self.axes[0].set_position((0.01, 0.11, 0.485 if side else 0.98, 0.82))
        self.axes[1].set_position((0.505, 0.11, 0.485, 0.82))
        self.axes[1].set_visible(side)
        for ax, ct_im, ov_im, texts, overlay in zip(self.axes, self._ct_im, self._ov_im,
                                                    self._labels, panels):
            ct_im.set_data(ct2d)
            ct_im.set_clim(*self._window)
            ov_im.set_data(self._panel_overlay(overlay, cut))
            for im in (ct_im, ov_im):   # also sets the axes' limits (autoscale is on)
                im.set_extent((-0.5, ct2d.shape[1] - 0.5, ct2d.shape[0] - 0.5, -0.5))
            ax.set_aspect(slice_aspect(self.spacing_mm, plane, self.affine))
            for where, text in texts.items():
                text.set_text(labels[where])
        self._legend.set_visible("errors" in panels)
        self._cax.set_visible("uncertainty" in panels)
        what = "  (left: reference, right: prediction)" if side else ""
        self._suptitle.set_text(f"{self.title}  {plane} {index}{what}".strip())
        self._fig.canvas.draw()
        self._rgba = np.asarray(self._fig.canvas.buffer_rgba()).copy()
        buf = _io.BytesIO()
        Image.fromarray(self._rgba[..., :3]).save(buf, format="PNG", compress_level=1)
        self._w_image.value = buf.getvalue()
        self._w_readout.value = self.readout()
        self.redraw_seconds = time.perf_counter() - t0

    def readout(self) -> str:
        """HTML: the slice, its world position in mm and the lung area on it in cm^2."""
        plane, index = self._axis, self._index[self._axis]
        _, r, c, _, _ = _plan(self.affine, plane)
        pixel_cm2 = self.spacing_mm[r] * self.spacing_mm[c] / 100.0
        pos = slice_position_mm(self.affine, self.ct_hu.shape, plane, index)
        text = (f"{plane} slice {index} / {self._n_slices(plane) - 1} &middot; "
                f"{'xyz'[_PLANES[plane][0]]} = {pos:.1f} mm")
        areas = []
        for name, m in (("reference", self.mask), ("prediction", self.pred)):
            if m is not None:
                cm2 = np.count_nonzero(display_slice(m, self.affine, plane, index)) * pixel_cm2
                areas.append(f"{name} {cm2:.2f} cm&sup2;")
        return text + (" &middot; lung area: " + ", ".join(areas) if areas else "")

    @_redraws
    def set_axis(self, name) -> None:
        """Show plane ``name`` ('axial', 'coronal', 'sagittal' or an array axis 0-2)."""
        self._axis = self._w_axis.value = plane_name(self.affine, name)
        self._w_slice.value = 0
        self._w_slice.max = self._n_slices(self._axis) - 1
        self._w_slice.value = self._index[self._axis]

    @_redraws
    def set_slice(self, index: int) -> None:
        """Show slice ``index`` (array index along the current plane's axis)."""
        n = self._n_slices(self._axis)
        if not 0 <= int(index) < n:
            raise LungsegInputError(f"SliceViewer: slice {index} is outside 0..{n - 1}.")
        self._index[self._axis] = self._w_slice.value = int(index)

    @_redraws
    def set_overlay(self, name: str) -> None:
        """Overlay one of :attr:`overlays` (those whose arrays were given)."""
        if name not in self.overlays:
            raise LungsegInputError(f"SliceViewer: overlay {name!r} is not available; "
                                    f"choose one of {', '.join(self.overlays)}.")
        self._overlay = self._w_overlay.value = name

    @_redraws
    def set_window(self, window) -> None:
        """HU window: a preset name in :data:`WINDOWS` or a (low, high) pair."""
        lo, hi = self._window = window_limits(window)
        self._w_preset.value = window if isinstance(window, str) else "custom"
        self._w_width.value, self._w_level.value = int(round(hi - lo)), int(round((lo + hi) / 2))

    @_redraws
    def set_opacity(self, alpha: float) -> None:
        """Opacity of the overlay's fill, 0 to 1."""
        self._alpha = self._w_alpha.value = float(np.clip(alpha, 0.0, 1.0))

    @_redraws
    def set_side_by_side(self, on: bool) -> None:
        """Show reference and prediction next to each other (needs both)."""
        self._side = self._w_side.value = bool(on) and not self._w_side.disabled

    def current_image(self) -> np.ndarray:
        """uint8 (H, W, 4) RGBA of what is drawn now."""
        return self._rgba.copy()

    def export(self, figures_dir=None) -> list[Path]:
        """Export the current view as ``viewer_<plane>_<index>`` (:func:`export_figure`)."""
        name = f"viewer_{self._axis}_{self._index[self._axis]}"
        paths = export_figure(self._fig, name, figures_dir or self.figures_dir)
        self._w_status.value = f"wrote {paths[0]} and {paths[1].name}"
        return paths

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
