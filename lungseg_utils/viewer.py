"""The interactive slice viewer (on :mod:`.viz`): any plane, HU presets, overlays, mm, export."""

from __future__ import annotations

import base64
import functools
import io
import time
from pathlib import Path

import matplotlib as mpl
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

from . import viz
from .errors import LungsegInputError
from .geometry import spacing_from_affine


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

    Arrays are (X, Y, Z) on the grid of ``affine``: ``mask`` and ``pred`` binary,
    ``uncertainty`` >= 0 (e.g. the TTA standard deviation). One Agg figure, built once, is
    redrawn with ``set_data`` and shown as a PNG in an ``ipywidgets.Image`` (no extra package)."""

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
        self._index = {p: self._n_slices(p) // 2 for p in viz.PLANES}
        self._axis, self._window, self._alpha, self._side = "axial", viz.WINDOWS["lung"], 0.4, False
        given = dict(none=ct_hu, reference=mask, prediction=pred,
                     errors=None if mask is None else pred, uncertainty=uncertainty)
        self.overlays = [o for o, arr in given.items() if arr is not None]
        self._overlay = "reference" if mask is not None else "none"
        self._build_figure()

        self._log = w.Output()
        self._w_image = w.Image(format="png", layout=w.Layout(align_self="flex-start"))
        self._w_readout, self._w_status = w.HTML(), w.HTML()
        self._w_axis = w.ToggleButtons(options=list(viz.PLANES), description="plane")
        self._w_slice = w.IntSlider(value=self._index["axial"], max=self._n_slices("axial") - 1,
                                    description="slice", layout=w.Layout(width="480px"))
        self._w_overlay = w.Dropdown(options=self.overlays, value=self._overlay,
                                     description="overlay")
        self._w_side = w.ToggleButton(description="side by side",
                                      disabled=mask is None or pred is None)
        self._w_preset = w.Dropdown(options=[*viz.WINDOWS, "custom"], value="lung",
                                    description="window")
        self._w_width = w.IntSlider(value=1500, min=10, max=4000, step=10, description="W")
        self._w_level = w.IntSlider(value=-600, min=-1200, max=1500, step=10, description="L")
        self._w_alpha = w.FloatSlider(value=self._alpha, max=1.0, step=0.05, description="opacity")
        self._w_export = w.Button(description="export figure", icon="download")
        for name in "axis slice overlay side preset image readout export status".split():
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
        return self.ct_hu.shape[viz.slicing_axis(self.affine, plane)]

    def _width_level(self) -> tuple[float, float]:
        width, level = self._w_width.value, self._w_level.value
        return level - width / 2, level + width / 2

    def _build_figure(self):
        with mpl.rc_context(viz.STYLE):
            self._fig = Figure(figsize=(5.0, 5.0), dpi=100)
            FigureCanvasAgg(self._fig)
            self.axes = [self._fig.add_axes((x, 0.11, 0.485, 0.82)) for x in (0.01, 0.505)]
            self._ct_im = [ax.imshow(np.zeros((2, 2)), cmap="gray", interpolation="nearest")
                           for ax in self.axes]
            self._ov_im = [ax.imshow(np.zeros((2, 2, 4)), interpolation="nearest")
                           for ax in self.axes]
            blank = dict.fromkeys(("left", "right", "top", "bottom"), "")
            self._labels = [viz.side_labels(ax, blank) for ax in self.axes]
            for ax in self.axes:
                ax.set_axis_off()
            self._legend = viz.colour_legend(self._fig, viz.ERROR_COLOURS, loc="lower center",
                                             bbox_to_anchor=(0.5, 0.01))
            self._cax = self._fig.add_axes((0.35, 0.05, 0.4, 0.025))
            self._fig.colorbar(mpl.cm.ScalarMappable(Normalize(0, self._u_max), "inferno"),
                               cax=self._cax, orientation="horizontal")
            self._cax.set_ylabel("uncertainty", rotation=0, ha="right", va="center")
            self._suptitle = self._fig.suptitle("")

    def _panel_overlay(self, overlay: str, cut) -> np.ndarray:
        if overlay == "reference":
            return viz.mask_rgba(cut(self.mask), viz.REF_COLOUR, self._alpha)
        if overlay == "prediction":
            return viz.mask_rgba(cut(self.pred), viz.PRED_COLOUR, self._alpha)
        if overlay == "errors":
            return viz.error_rgba(cut(self.mask), cut(self.pred), self._alpha)
        if overlay == "uncertainty":
            return viz.heat_rgba(cut(self.uncertainty), self._alpha, self._u_max)
        return np.zeros(cut(self.ct_hu).shape + (4,), np.float32)

    def _redraw(self):
        t0 = time.perf_counter()
        plane, index, side = self._axis, self._index[self._axis], self._side
        cut = lambda vol: viz.display_slice(vol, self.affine, plane, index)  # noqa: E731
        ct2d, labels = cut(self.ct_hu), viz.orientation_labels(self.affine, plane)
        panels = ["reference", "prediction"] if side else [self._overlay]
        self._fig.set_size_inches(9.0 if side else 5.0, 5.0)
        self.axes[0].set_position((0.01, 0.11, 0.485 if side else 0.98, 0.82))
        self.axes[1].set_visible(side)
        for ax, ct_im, ov_im, texts, overlay in zip(self.axes, self._ct_im, self._ov_im,
                                                    self._labels, panels):
            ct_im.set_data(ct2d)
            ct_im.set_clim(*self._window)
            ov_im.set_data(self._panel_overlay(overlay, cut))
            for im in (ct_im, ov_im):   # also sets the axes' limits (autoscale is on)
                im.set_extent((-0.5, ct2d.shape[1] - 0.5, ct2d.shape[0] - 0.5, -0.5))
            ax.set_aspect(viz.slice_aspect(self.spacing_mm, plane, self.affine))
            for where, text in texts.items():
                text.set_text(labels[where])
        self._legend.set_visible("errors" in panels)
        self._cax.set_visible("uncertainty" in panels)
        what = "  (left: reference, right: prediction)" if side else ""
        self._suptitle.set_text(f"{self.title}  {plane} {index}{what}".strip())
        self._fig.canvas.draw()
        self._rgba = np.asarray(self._fig.canvas.buffer_rgba()).copy()
        buf = io.BytesIO()
        Image.fromarray(self._rgba[..., :3]).save(buf, format="PNG", compress_level=1)
        self._w_image.value = buf.getvalue()
        self._w_readout.value = self.readout()
        self.redraw_seconds = time.perf_counter() - t0

    def readout(self) -> str:
        """HTML: the slice, its world position in mm and the lung area on it in cm^2."""
        plane, index = self._axis, self._index[self._axis]
        _, r, c, _, _ = viz.slice_plan(self.affine, plane)
        pixel_cm2 = self.spacing_mm[r] * self.spacing_mm[c] / 100.0
        pos = viz.slice_position_mm(self.affine, self.ct_hu.shape, plane, index)
        text = (f"{plane} slice {index} / {self._n_slices(plane) - 1} &middot; "
                f"{'xyz'[viz.PLANES[plane][0]]} = {pos:.1f} mm")
        areas = []
        for name, m in (("reference", self.mask), ("prediction", self.pred)):
            if m is not None:
                cm2 = np.count_nonzero(viz.display_slice(m, self.affine, plane, index)) * pixel_cm2
                areas.append(f"{name} {cm2:.2f} cm&sup2;")
        return text + (" &middot; lung area: " + ", ".join(areas) if areas else "")

    @_redraws
    def set_axis(self, name) -> None:
        """Show plane ``name`` ('axial', 'coronal', 'sagittal' or an array axis 0-2)."""
        self._axis = self._w_axis.value = viz.plane_name(self.affine, name)
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
        """HU window: a preset name in :data:`.viz.WINDOWS` or a (low, high) pair."""
        lo, hi = self._window = viz.window_limits(window)
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

    def export(self) -> list[Path]:
        """Export the current view as ``viewer_<plane>_<index>`` (:func:`.viz.export_figure`)."""
        name = f"viewer_{self._axis}_{self._index[self._axis]}"
        paths = viz.export_figure(self._fig, name, self.figures_dir)
        self._w_status.value = f"wrote {paths[0]} and {paths[1].name}"
        return paths

    def png(self) -> bytes:
        """The current picture as PNG bytes."""
        return bytes(self._w_image.value)

    def _repr_mimebundle_(self, **kwargs):
        return with_picture(self.widget._repr_mimebundle_(**kwargs), self.png())


def with_picture(bundle, png: bytes):
    """A widget's display bundle plus the current picture as ``image/png``: a front end with
    live widgets shows the widget, a static render (``nbconvert --to html``) the picture."""
    return {**(bundle or {}), "image/png": base64.b64encode(png).decode("ascii")}
