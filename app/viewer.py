# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lung CT slice viewer
#
# Pick a scan, scroll through it in any plane, with the expert lung mask, a prediction and
# the error map between them (true positives, false positives, false negatives) drawn over
# it. Pictures follow the radiological convention (the patient's right on the image's left),
# read from the file's affine; the line under the picture gives the slice's position in
# millimetres and the lung area on it. Serve it as an app with `voila app/viewer.ipynb`.
#
# Data: Lung CT Segmentation Challenge 2017 (LCTSC), The Cancer Imaging Archive, CC BY 3.0
# (Yang et al., 2017, DOI 10.7937/K9/TCIA.2017.3R3FVZ08).

# %%
from lungseg_utils import config, dataio, synthetic
from lungseg_utils.scan import browser  # the viewer app: any NIfTI file or DICOM folder

course = {f"{p.name} (64³)": p for p in dataio.discover_cases(synthetic.resolve_data_dir())}
native_dir = config.native_data_dir()
native = {f"{p.name} (native)": p for p in dataio.discover_cases(native_dir)} if native_dir else {}

# %% [markdown]
# Pick a case, or type the path of any NIfTI file or DICOM folder and press *open*: the scan
# shows at once, with its expert mask where it has one. *segment* runs the model of the
# active run (`LUNGSEG_RUN`: what notebook 04 trained; else `results/reference/`); the
# uncertainty overlay is the spread of the ensemble's members (of a single model: of its
# eight flipped predictions, test-time augmentation). The model loads on the first press
# only: on OpenVINO where it was exported (`lungseg export-ir`), else on TensorFlow. Without
# a model the classical threshold baseline segments instead.

# %%
# NBVAL_IGNORE_OUTPUT
browser.CaseBrowser({**course, **native}, predict=browser.predictor_for(config.active_run_dir()))
