# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
# ---

# %% [markdown]
# # Lung CT slice viewer
#
# Scroll through one chest CT in any plane, with the expert lung mask, a prediction and
# the error map between them (true positives, false positives, false negatives) drawn over
# it. Pictures follow the radiological convention (the patient's right on the image's left),
# read from the file's affine; the line under the picture gives the slice's position in
# millimetres and the lung area on it. Serve it as an app with `voila notebooks/viewer.ipynb`.
#
# Data: Lung CT Segmentation Challenge 2017 (LCTSC), The Cancer Imaging Archive, CC BY 3.0
# (Yang et al., 2017, DOI 10.7937/K9/TCIA.2017.3R3FVZ08).

# %%
from lungseg_utils import anatomy, config, geometry, inference, io, synthetic, viewer

case = io.load_case(io.discover_cases(synthetic.resolve_data_dir())[0])

# %% [markdown]
# The prediction comes from the trained network with test-time augmentation when the active
# run (`LUNGSEG_RUN`: what notebook 04 trained; else `results/reference/`) holds a model
# (only then is TensorFlow imported; the spread of the eight flipped predictions is the
# uncertainty overlay), otherwise from the classical threshold baseline.

# %%
run = config.active_run_dir()
if (run / inference.MANIFEST).exists() or (run / inference.MODEL_FILE).exists():
    result = inference.predict_case(case, model=inference.load_model(run), tta=True)
    pred, source = result["mask"], "3D U-Net with TTA"
    uncertainty = geometry.from_model_grid(result["std64"], result["grid"])
else:
    pred, uncertainty = anatomy.classical_lung_mask(case.ct_hu, case.spacing_mm), None
    source = "classical baseline"
print(f"{case.case_id}: {case.ct_hu.shape} voxels, prediction: {source}")

# %%
# NBVAL_IGNORE_OUTPUT
viewer.SliceViewer(case.ct_hu, case.affine, mask=case.mask, pred=pred, uncertainty=uncertainty,
                   title=f"{case.case_id} (prediction: {source})")
