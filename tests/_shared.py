"""Small synthetic inputs shared by several test files (imported as ``_shared``)."""

import numpy as np

#: Blob phantom: the mask is exactly ``ct > THRESHOLD`` (see :func:`blob_phantom`).
THRESHOLD = 0.3
#: Slice-viewer case: shape, voxel size and origin of an L, P, S grid.
SHAPE = (32, 28, 20)
SPACING = (1.5, 2.0, 3.0)
ORIGIN = (100.0, 50.0, -200.0)


def blob_phantom(seed=0):
    """A CT whose mask is exactly ``ct > THRESHOLD``: two blobs, no voxel near the threshold."""
    rng = np.random.default_rng(seed)
    i, j, k = np.indices((64, 64, 64), dtype=np.float32)
    blob = (((i - 24) / 14) ** 2 + ((j - 30) / 18) ** 2 + ((k - 33) / 22) ** 2 <= 1) | (
        ((i - 44) / 10) ** 2 + ((j - 36) / 16) ** 2 + ((k - 28) / 18) ** 2 <= 1)
    ct = np.where(blob, 0.6 + 0.2 * rng.random(blob.shape), 0.1 * rng.random(blob.shape))
    return ct.astype(np.float32), blob.astype(np.uint8)


def lps_affine(spacing=SPACING, origin=ORIGIN):
    """Affine of an L, P, S grid (as the course data) with voxel 0 at ``origin``."""
    aff = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    aff[:3, 3] = origin
    return aff


def viewer_case():
    """CT with a body and a box of lung; the prediction is the box moved 2 voxels to the left."""
    ct = np.full(SHAPE, -1000.0, np.float32)
    ct[3:29, 2:26, :] = 40.0
    mask = np.zeros(SHAPE, np.uint8)
    mask[8:20, 6:16, 5:15] = 1               # 12 x 10 voxels on each axial slice 5..14
    ct[mask > 0] = -850.0
    pred = np.zeros_like(mask)
    pred[10:22, 6:16, 5:15] = 1              # false positives x 20..21, false negatives x 8..9
    unc = np.zeros(SHAPE, np.float32)
    unc[10:22, 6:16, 5:15] = np.abs(pred - mask)[10:22, 6:16, 5:15] * 0.5 + 0.1
    return dict(ct_hu=ct, affine=lps_affine(), mask=mask, pred=pred, uncertainty=unc)


def dead_pid() -> int:
    """The id of a process that has ended (a killed writer's)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def two_member_ensemble(folder, smoke_model_path, other=None):
    """A two-member ensemble folder: the smoke model and a re-initialised copy (``other``:
    another model for the second member)."""
    import json
    import shutil

    from lungseg_utils import config, dataio, inference

    keras = config.import_keras_quietly()
    folder.mkdir()
    shutil.copyfile(smoke_model_path, folder / "fold_0.keras")
    second = other or keras.models.clone_model(inference.load_model(smoke_model_path))
    second.save(folder / "fold_1.keras")
    entries = [{"file": f, "sha256": dataio.file_sha256(folder / f)}
               for f in ("fold_0.keras", "fold_1.keras")]
    (folder / inference.MANIFEST).write_text(json.dumps({"members": entries}))
    return folder
