"""lungseg_utils: the shared module of the lungseg notebooks.

One job per module, in the order the data flows; imports only go down this list:

``errors``       the project's exception and warning types
``config``       profiles, paths, seeds, quiet Keras import (finding data writes nothing)
``io``           Case; NIfTI and JSON read/write through one atomic writer; discover; split
``preprocess``   HU window <-> [0, 1], masks to tensors
``anatomy``      body, airways, components, holes, boundaries: post-processing and the
                 classical baseline, one algorithm each
``metrics``      Dice, IoU, HD95, ASSD, volumes, summaries, bootstrap, AUC
``geometry``     the 64^3 model grid: there and back, with the input's shape and affine
``synthetic``    analytic chest phantoms; the demo data set when no real data is found
``augment``      pure NumPy transforms of (CT, mask) pairs
``dataset``      the Keras ``PyDataset`` that feeds training
``unet``         the 3D U-Net, Dice/hybrid losses, Dice and IoU metrics
``callbacks``    Keras callbacks of a run: dropout state backup, wall-clock budget, schedule
``distribute``   the ``tf.distribute`` strategy training runs under
``train``        ``train()``, resume, ``python -m lungseg_utils.train``
``inference``    load, forward, predict, refine, TTA, ``python -m lungseg_utils.inference``
``experiments``  method comparison, out-of-fold scoring; builds and checks the result JSONs
``ensemble``     cross-validation: K fold members, their manifest, publishing the reference
``robustness``   the robustness suite: controlled shifts of the scans, scored out of fold
``viz``          figure style and export, static slice figures
``viewer``       the interactive slice viewer
``formatting``   numbers as printed: fixed decimals by kind of value, minus, n/a
``numbers``      what the report and README print, read from a run's result files
``report``       the PDF report and README results, read from the result files

Importing the package imports no TensorFlow; modules that need Keras import it quietly.
"""

__version__ = "1.0.0"

from .errors import LungsegInputError, LungsegWarning  # noqa: F401
