"""lungseg_utils: the course core that the lungseg notebooks import.

One job per module, in the order the data flows; imports only go down this list:

``errors``       the project's exception and warning types
``atomic``       the one atomic writer: whole files and folders or nothing
``config``       profiles, paths, seeds, quiet Keras import (finding data writes nothing)
``anatomy``      body, airways, components, holes: post-processing, the classical baseline
``geometry``     spacing, axes, LPS/RAS; the 64^3 model grid there and back (shape, affine)
``dataio``       Case; NIfTI and JSON read/write through one atomic writer; discover; split
``preprocess``   HU window <-> [0, 1], masks to tensors
``metrics``      Dice, IoU, HD95, ASSD, volumes, summaries, bootstrap, AUC
``synthetic``    analytic chest phantoms; the demo data set when no real data is found
``augment``      pure NumPy transforms of (CT, mask) pairs
``dataset``      the Keras ``PyDataset`` that feeds training
``unet``         the 3D U-Net, Dice/hybrid losses, Dice and IoU metrics
``train``        the training steps and ``train()``: one model from random weights, a new run
``inference``    load, forward, predict, refine, TTA on any grid and back
``experiments``  method comparison, out-of-fold scoring; builds and checks the result JSONs
``ensemble``     cross-validation: K fold members and their manifest
``viz``          figure style and export, static slice figures
``viewer``       the interactive slice viewer

The wings ``runs/``, ``scan/``, ``study/``, ``report/`` import the core, never the other way
(docs/layout.md). Importing the package imports no TensorFlow.
"""

__version__ = "1.0.0"

from .errors import LungsegInputError, LungsegWarning  # noqa: F401
