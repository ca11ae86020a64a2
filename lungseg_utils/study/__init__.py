"""Studies whose result files the report cites, each runnable on its own (``lungseg ...``).

They import the core (and ``runs`` to train, ``scan`` for its output checks), never the
other way; notebook 05 reads what they wrote through
:func:`lungseg_utils.experiments.optional_result`. Imports only go down this list:

``reference``      a finished run made the committed reference (``lungseg promote``)
``seeds``          seed spread: one member trained again with other seeds (``lungseg seeds``)
``compact``        an ensemble stored at half precision: what it changes, measured
``refine``         the model grid's boundary threshold, chosen out of fold
``robustness``     the robustness suite: controlled shifts of the scans, scored out of fold
``ensemble_size``  K, the number of members, chosen by measurement (out of fold, suite)
"""
