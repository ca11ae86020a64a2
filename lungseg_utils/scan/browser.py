"""The case browser of the viewer app (``app/viewer.ipynb``, served with Voila): pick a
course or native case, or type the path of any NIfTI file or DICOM folder, look at it in the
course's :class:`lungseg_utils.viewer.SliceViewer`, and segment it on demand with a run's
U-Net (or, without one, the classical baseline).
"""

from __future__ import annotations

import html
import time
from pathlib import Path

import numpy as np

from .. import dataio, viewer
from ..errors import LungsegInputError
from ..viewer import SliceViewer
from . import reader


def load_for_viewing(path, load_scan=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(ct_hu float32 (X, Y, Z), affine (4, 4), reference mask uint8 or None) of a case
    folder (its ``lung.nii.gz`` is the reference, if there) or any other scan, read by
    ``load_scan(path) -> (ct_hu, affine, ...)`` (default
    :func:`lungseg_utils.scan.reader.load_scan`: a NIfTI file or a DICOM folder). Raises :class:`LungsegInputError` naming the path."""
    path = Path(path).expanduser()
    if path.is_dir() and (path / dataio.CT_NAME).exists() and (path / dataio.MASK_NAME).exists():
        case = dataio.load_case(path)
        return case.ct_hu, case.affine, case.mask
    if not path.exists():
        raise LungsegInputError(f"{path}: no such file or folder.")
    ct_hu, affine = (load_scan or reader.load_scan)(path)[:2]
    return ct_hu, affine, None


class CaseBrowser:
    """Pick a scan and look at it: a case picker over ``sources`` ({label: case folder, NIfTI
    file or DICOM folder}) and a path field for any other scan, above a :class:`SliceViewer`.

    The scan shows at once, with its reference mask where it has one. ``predict``, a callable
    ``(ct_hu, affine) -> {"mask", "uncertainty" (or None), "source"}`` (e.g. the run's
    U-Net, which loads its runtime on first use), runs only when "segment" is pressed, with a
    progress bar and a status line; errors are shown in the status line, never raised.
    ``load_scan`` reads a path that is not a case folder (:func:`load_for_viewing`).
    """

    def __init__(self, sources: dict, predict=None, figures_dir=None, load_scan=None):
        import ipywidgets as w

        if not sources:
            raise LungsegInputError("CaseBrowser: no scans to show.")
        self.sources, self.predict, self.figures_dir = dict(sources), predict, figures_dir
        self.load_scan = load_scan
        self.viewer, self.scan = None, None
        self._w_case = w.Dropdown(options=list(self.sources), description="case")
        self._w_path = w.Text(placeholder="a NIfTI file or a DICOM folder", description="or path")
        self._w_open = w.Button(description="open", icon="folder-open")
        self._w_segment = w.Button(description="segment", icon="play", disabled=predict is None,
                                   button_style="primary")
        self._w_progress = w.IntProgress(value=0, min=0, max=3, layout=w.Layout(width="160px"))
        self._w_state = w.HTML()
        for name in ("case", "path", "open", "segment", "progress", "state"):
            getattr(self, f"_w_{name}").add_class(f"lungseg-browser-{name}")
        self._view = w.VBox()
        self._log = w.Output()
        self._w_case.observe(self._log.capture()(lambda ch: self.open(ch["new"])), names="value")
        self._w_open.on_click(self._log.capture()(lambda _: self.open(self._w_path.value)))
        self._w_segment.on_click(self._log.capture()(lambda _: self.segment()))
        self.widget = w.VBox([w.HBox([self._w_case, self._w_path, self._w_open]),
                              w.HBox([self._w_segment, self._w_progress, self._w_state]),
                              self._view, self._log])
        self.open(next(iter(self.sources)))

    def _say(self, text: str, error: bool = False) -> None:
        colour = "#b00020" if error else "#333"
        self._w_state.value = f'<span style="color:{colour}">{html.escape(text)}</span>'

    def open(self, label_or_path: str) -> bool:
        """Show a scan: a label of ``sources`` or a path. False (and the reason in the status
        line) if it cannot be read; the scan shown before stays."""
        label = str(label_or_path).strip()
        path = self.sources.get(label, label)
        try:
            ct_hu, affine, mask = load_for_viewing(path, self.load_scan)
        except LungsegInputError as exc:
            self._say(str(exc), error=True)
            return False
        self.scan = {"label": Path(label).name if label not in self.sources else label,
                     "ct_hu": ct_hu, "affine": affine, "mask": mask}
        self._show()
        self._w_progress.value = 0
        what = "with its reference mask" if mask is not None else "no reference mask"
        self._say(f"{self.scan['label']}: {ct_hu.shape} voxels, {what}"
                  + ("; press segment for a prediction" if self.predict else ""))
        return True

    def _show(self, pred=None, uncertainty=None, source: str = "") -> None:
        s = self.scan
        title = s["label"] + (f" (prediction: {source})" if source else "")
        self.viewer = SliceViewer(s["ct_hu"], s["affine"], mask=s["mask"], pred=pred,
                                  uncertainty=uncertainty, title=title,
                                  figures_dir=self.figures_dir)
        self._view.children = [self.viewer.widget]

    def segment(self) -> bool:
        """Predict the scan shown (``predict``), then show the prediction and its errors."""
        if self.predict is None or self.scan is None:
            return False
        t0 = time.perf_counter()
        self._w_segment.disabled, self._w_progress.value = True, 1
        self._say(f"segmenting {self.scan['label']} (the first time also loads the model)...")
        try:
            result = self.predict(self.scan["ct_hu"], self.scan["affine"])
            self._w_progress.value = 2
            self._show(result["mask"], result.get("uncertainty"), result.get("source", ""))
            overlay = "errors" if "errors" in self.viewer.overlays else "prediction"
            self.viewer.set_overlay(overlay)
        except (LungsegInputError, MemoryError) as exc:
            self._say(f"segmentation failed: {exc}", error=True)
            return False
        finally:
            self._w_segment.disabled = False
        self._w_progress.value = 3
        self._say(f"{self.scan['label']}: {result.get('source', 'prediction')} in "
                  f"{time.perf_counter() - t0:.1f} s")
        return True

    def _repr_mimebundle_(self, **kwargs):
        return viewer.with_picture(self.widget._repr_mimebundle_(**kwargs), self.viewer.png())


def unet_predictor(run_dir, tta: bool | None = None):
    """A ``predict`` for :class:`CaseBrowser`: the model or ensemble of ``run_dir``, loaded
    on the first call. The uncertainty is the spread of an ensemble's members (one pass
    each), or with ``tta`` (default: for a single model) the spread of the 8 flips."""
    state = {}

    def predict(ct_hu, affine) -> dict:
        from .. import geometry, inference
        from .openvino_ir import forward_for

        if "forward" not in state:
            state["forward"] = forward_for(run_dir)[0]
            ensemble = (Path(run_dir) / inference.MANIFEST).exists()
            state["tta"] = not ensemble if tta is None else tta
        res = inference.predict_volume(state["forward"], ct_hu, affine, tta=state["tta"],
                                       members=True)
        spread = res["std64"] if state["tta"] else res["members64"].std(axis=0)
        return {"mask": res["mask"], "uncertainty": geometry.from_model_grid(spread, res["grid"]),
                "source": "3D U-Net" + (" with TTA" if state["tta"] else
                                        f", the spread of its {len(res['members64'])} members")}

    return predict


def classical_predictor(ct_hu, affine) -> dict:
    """A ``predict`` for :class:`CaseBrowser` without a model: the classical baseline."""
    from .. import anatomy, geometry

    return {"mask": anatomy.classical_lung_mask(ct_hu, geometry.spacing_from_affine(affine)),
            "uncertainty": None, "source": "classical baseline"}


def predictor_for(run_dir, tta: bool | None = None):
    """:func:`unet_predictor` of ``run_dir`` if it holds a model or an ensemble, else
    :func:`classical_predictor`."""
    from ..inference import MANIFEST, MODEL_FILE

    run_dir = Path(run_dir)
    if (run_dir / MANIFEST).exists() or (run_dir / MODEL_FILE).exists():
        return unet_predictor(run_dir, tta=tta)
    return classical_predictor
