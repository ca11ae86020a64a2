"""lungseg_utils: the shared module of the lungseg notebooks.

One job per module, in the order the data flows; imports only go down this list:

``errors``       the project's exception and warning types
``config``       profiles, paths, seeds, quiet Keras import (finding data writes nothing)
``dicom``        a CT series from a folder of DICOM files -> (HU, affine)
``rtstruct``     expert contours from a DICOM RTSTRUCT, filled into a mask
``io``           Case; NIfTI and JSON read/write through one atomic writer; discover; split
``outputs``      output paths checked before any work: suffix, folder, not an input
``preprocess``   HU window <-> [0, 1], masks to tensors
``anatomy``      body, airways, components, holes, boundaries: post-processing and the
                 classical baseline, one algorithm each
``metrics``      Dice, IoU, HD95, ASSD, volumes, summaries, bootstrap, AUC
``geometry``     the 64^3 model grid: there and back, with the input's shape and affine
``synthetic``    analytic chest phantoms; the demo data set when no real data is found
``augment``      pure NumPy transforms of (CT, mask) pairs
``dataset``      the Keras ``PyDataset`` that feeds training
``unet``         the 3D U-Net, Dice/hybrid losses, Dice and IoU metrics
``storage``      a model file without its optimizer, weights stored as float16
``callbacks``    Keras callbacks of a run: dropout state backup, wall-clock budget, schedule
``distribute``   the ``tf.distribute`` strategy training runs under
``runstate``     a training run's folder: finished, resumable, or what is missing
``train``        ``train()``, resume, ``python -m lungseg_utils.train``
``inference``    load, forward, predict, refine, TTA, ``python -m lungseg_utils.inference``
``quality``      a segmented scan's volumes, right/left and quality flag
``dicom_seg``    the mask as a DICOM Segmentation object (highdicom)
``segment``      the inference command: a scan in; masks, summary, flag out
``experiments``  method comparison, out-of-fold scoring; builds and checks the result JSONs
``ensemble``     cross-validation: K fold members, their manifest, publishing the reference
``compact``      an ensemble stored at half precision, what it changes measured
``robustness``   the robustness suite: controlled shifts of the scans, scored out of fold
``ensemble_size`` K, the number of members, chosen by measurement (out of fold, suite)
``data``         the whole LCTSC from TCIA, converted into this project's layouts
``viz``          figure style and export, static slice figures
``viewer``       the interactive slice viewer
``formatting``   numbers as printed: fixed decimals by kind of value, minus, n/a
``numbers``      what the report and README print, read from a run's result files
``report``       the PDF report and README results, read from the result files

Importing the package imports no TensorFlow; modules that need Keras import it quietly.
"""

__version__ = "1.0.0"

from .errors import LungsegInputError, LungsegWarning  # noqa: F401
