"""``python -m lungseg_utils COMMAND ...``: the ``lungseg`` command (:mod:`lungseg_utils.cli`).

The command is run by name, as ``python -m lungseg_utils.inference`` runs its own: no module
of the package imports :mod:`.cli`, the last layer.
"""

import runpy

runpy.run_module("lungseg_utils.cli", run_name="__main__", alter_sys=True)
