"""Long training runs: what the ``lungseg train`` and ``lungseg cv`` commands add to the course.

The course core trains a model from random weights for a fixed number of epochs, in steps
a notebook shows (:mod:`lungseg_utils.train`). A run of the train command composes the same
steps with what long runs need: backups to continue after a kill (``--resume``), a
wall-clock budget (``--budget_min``), fine-tuning from earlier weights (``--init_from``),
several devices. It imports the core, never the other way. Imports only go down this list:

``command``   the one wrapper every command's ``main`` goes through: one-line errors, warnings
``state``     a run's folder: finished, resumable, or what is missing; the kill tests' hook
``devices``   the ``tf.distribute`` strategy a run trains under, its replicas' batches
``backup``    the callbacks that keep a run resumable: Keras's backup, the dropout state
``budget``    the wall-clock budget: a few steps timed, the epochs that fit, a graceful stop
``training``  ``train_run()``: a new, resumed, budgeted or fine-tuned run; ``lungseg train``
``cv``        ``lungseg cv``: cross-validation, each member a full run
"""
