"""The claims about how the run was scored and trained: the abstract's first sentence, the
Data section's split, Table 1's caption, the final model, and the Methods' paragraph on
training (``train_config.json``).

Each is a :class:`~lungseg_utils.report.conditions.Claim`; :mod:`lungseg_utils.report.claims`
chooses among those of a key and checks them.
"""

from __future__ import annotations

from .conditions import Claim


def _how(n, *hows) -> bool:
    """The scored block was scored in one of ``hows`` (``values.scored_block``)."""
    return n["scored"]["how"] in hows


METHOD_CLAIMS: tuple[Claim, ...] = (
    # ---- how the run was scored (abstract, data, Table 1)
    Claim("abstract-oof", "abstract_model",
          lambda n: _how(n, "out_of_fold") and bool(n["ensemble"]),
          lambda n: f"We train an ensemble of {n['ensemble']['members']} U-Nets and score "
                    "every case with the member that never saw it."),
    Claim("abstract-oof-members", "abstract_model", lambda n: _how(n, "out_of_fold"),
          lambda n: "We train several U-Nets and score every case with the one that never saw it."),
    Claim("abstract-cv", "abstract_model", lambda n: _how(n, "cross_validation"),
          lambda n: f"We train one U-Net and score all {n['scored']['n']} cases in a "
                    f"{n['scored']['folds']}-fold cross-validation, each by the model that "
                    "never saw it."),
    Claim("abstract-test", "abstract_model", lambda n: _how(n, "test_split"),
          lambda n: f"We train one U-Net and score it on {n['scored']['n']} held-out cases."),

    Claim("split-oof", "split", lambda n: _how(n, "out_of_fold"),
          lambda n: f"The {n['n_cases']['all']} cases were split at random (seed "
                    f"{n['split']['seed']}) into "
                    f"{n['ensemble']['members'] if n['ensemble'] else 'several'} folds. Member "
                    "i of the ensemble trains on the other folds and scores the cases of fold "
                    "i, so that every case is scored once, out of fold: by a model that never "
                    "saw it."),
    Claim("split-cv", "split", lambda n: _how(n, "cross_validation"),
          lambda n: f"The {n['n_cases']['all']} cases were split once (seed "
                    f"{n['split']['seed']}) into {n['n_cases']['train']} for training, "
                    f"{n['n_cases']['val']} for validation and {n['n_cases']['test']} for "
                    f"testing. Since {n['n_cases']['test']} test cases are too few, the same "
                    f"settings were also trained in a {n['scored']['folds']}-fold "
                    "cross-validation, in which every case is scored once, out of fold: by "
                    "the model that did not train on it."),
    Claim("split-test", "split", lambda n: _how(n, "test_split"),
          lambda n: f"The {n['n_cases']['all']} cases were split once (seed "
                    f"{n['split']['seed']}) into {n['n_cases']['train']} for training, "
                    f"{n['n_cases']['val']} for validation and {n['n_cases']['test']} for "
                    f"testing ({', '.join(n['evaluation']['test_cases'])})."),

    Claim("table1-oof", "table1", lambda n: _how(n, "out_of_fold"),
          lambda n: f"Out of fold: each of the {n['scored']['n']} cases scored by the "
                    "ensemble member that never trained on it."),
    Claim("table1-cv", "table1", lambda n: _how(n, "cross_validation"),
          lambda n: f"Out of fold: each of the {n['scored']['n']} cases scored by the model "
                    f"of a {n['scored']['folds']}-fold cross-validation that never trained on it."),
    Claim("table1-test", "table1", lambda n: _how(n, "test_split"),
          lambda n: f"The {n['scored']['n']} held-out test cases of the single model."),

    Claim("ensemble", "ensemble", lambda n: bool(n["ensemble"]),
          lambda n: f"The final model is the ensemble of all {n['ensemble']['members']} members "
                    f"({n['ensemble']['total_mb']} MB of weights), which averages their "
                    "predicted probabilities."),
    Claim("single", "ensemble", lambda n: not n["ensemble"],
          lambda n: "The final model is this single network."),

    # ---- how it was trained (train_config.json)
    Claim("init-random", "init", lambda n: n["training"]["init_from"] is None,
          lambda n: "Training starts from random initial weights."),
    Claim("init-earlier", "init", lambda n: n["training"]["init_from"] is not None,
          lambda n: "Training did not start from random weights but continued from an earlier "
                    "model of the same network (train_config.json records which)."),
    Claim("length-fixed", "length",
          lambda n: n["training"]["epochs_run"] == n["training"]["epochs_planned"],
          lambda n: f"{'Each member' if n['ensemble'] else 'The network'} trains for "
                    f"{n['training']['epochs_run']} epochs of {n['training']['volumes']} in "
                    f"batches of {n['training']['batch_size']}, with the Adam optimiser; "
                    f"{'member 0' if n['ensemble'] else 'it'} took "
                    f"{n['training']['wall_time_min']} min (Keras {n['training']['keras']}, "
                    f"TensorFlow {n['training']['tensorflow']})."),
    Claim("length-stopped", "length",
          lambda n: int(n["training"]["epochs_run"]) < int(n["training"]["epochs_planned"]),
          lambda n: f"{'Each member' if n['ensemble'] else 'The network'} trains for at most "
                    f"{n['training']['epochs_planned']} epochs of {n['training']['volumes']} in "
                    f"batches of {n['training']['batch_size']}, with the Adam optimiser; "
                    f"{'member 0' if n['ensemble'] else 'it'} stopped early after "
                    f"{n['training']['epochs_run']} and took {n['training']['wall_time_min']} min "
                    f"(Keras {n['training']['keras']}, TensorFlow {n['training']['tensorflow']})."),
    Claim("schedule-warmup-cosine", "schedule",
          lambda n: n["training"]["schedule"] == "cosine" and n["training"]["warmup_epochs"] != "0",
          lambda n: f"The learning rate rises linearly to {n['training']['learning_rate']} over "
                    f"the first {n['training']['warmup_epochs']} epochs (a warm-up) and then "
                    "falls along half a cosine to 1 % of that at the last epoch."),
    Claim("schedule-cosine", "schedule",
          lambda n: n["training"]["schedule"] == "cosine" and n["training"]["warmup_epochs"] == "0",
          lambda n: f"The learning rate starts at {n['training']['learning_rate']} and falls "
                    "along half a cosine to 1 % of that at the last epoch."),
    Claim("schedule-plateau", "schedule", lambda n: n["training"]["schedule"] != "cosine",
          lambda n: f"The learning rate starts at {n['training']['learning_rate']} and is halved "
                    "whenever the validation loss has not improved for "
                    f"{n['training']['reduce_lr_patience']} epochs."),
    Claim("keep-last", "keep", lambda n: n["training"]["checkpoint"] == "last",
          lambda n: "The weights after the last epoch are kept: the validation cases are only "
                    "logged, never used to choose anything."),
    Claim("keep-best", "keep", lambda n: n["training"]["checkpoint"] != "last",
          lambda n: "The weights of the epoch with the lowest validation loss are kept (epoch "
                    f"{n['training']['best_epoch']}, validation Dice "
                    f"{n['training']['best_val_dice']})."),
    Claim("precision-bf16", "precision", lambda n: n["training"]["precision"] == "bfloat16",
          lambda n: "The network computes in bfloat16 mixed precision (16-bit numbers with the "
                    "range of 32-bit ones), which this CPU supports natively."),
    Claim("precision-fp32", "precision", lambda n: n["training"]["precision"] == "float32",
          lambda n: "The network computes in 32-bit floating point."),
    Claim("curves-random", "fig_curves", lambda n: n["training"]["init_from"] is None,
          lambda n: "from random initial weights"),
    Claim("curves-earlier", "fig_curves", lambda n: n["training"]["init_from"] is not None,
          lambda n: "continuing from an earlier model's weights, not from random ones"),
)
