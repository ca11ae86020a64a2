"""lungseg_utils: the shared module of the lungseg notebooks.

One job per module, in the order the data flows:

``config``      profiles, paths, seeds, quiet TensorFlow import
``io``          discover, load, validate and save cases (NIfTI), the split, JSON
``preprocess``  HU window and [0, 1] normalisation, body and low-HU masks
``geometry``    the 64^3 model grid: there and back, with the input's shape and affine
``synthetic``   analytic chest phantoms for tests and the demo fallback
``augment``     NumPy transforms and the Keras ``PyDataset``
``model``       the 3D U-Net, Dice/hybrid losses, Dice and IoU metrics
``train``       training runs and ``python -m lungseg_utils.train``
``evaluate``    metrics in mm, post-processing, the classical baseline
``inference``   prediction, TTA and ``python -m lungseg_utils.inference``
``viz``         figure style and export, the interactive slice viewer
``report``      the PDF report built from result files

Importing the package imports no TensorFlow; modules that need Keras import it quietly.
"""

__version__ = "1.0.0"

from .errors import LungsegInputError, LungsegWarning  # noqa: F401
