"""Cross-validation as ``lungseg cv`` runs it: each fold member a full run of the train command.

:func:`lungseg_utils.ensemble.cross_validate` trains the K fold members with the trainer it is
given; this command gives it :func:`lungseg_utils.runs.training.train_run`, so that a member
can be fine-tuned from another ensemble's (``--init_from``) and a member killed mid-way
leaves a run folder that ``lungseg train --resume`` continues. Command line::

    lungseg cv --k 3 --profile main --out_dir results/cv/main
"""

from __future__ import annotations

import argparse
import sys

from .. import config, dataio, ensemble, inference
from ..errors import LungsegInputError
from .command import run_command
from . import training


def fine_tuning(init_from, k: int) -> dict:
    """What :func:`lungseg_utils.ensemble.cross_validate` needs to fine-tune (``--init_from``):
    member i trains on the split of member i of the ensemble ``init_from``, starting from its
    weights (``init_weights`` of :func:`lungseg_utils.runs.training.train_run`)."""
    parents = ensemble.member_runs(init_from)
    if len(parents) != k:
        raise LungsegInputError(f"{init_from}: has {len(parents)} members, not k={k}.")
    starts = iter(parents)                                    # the members train in fold order

    def trainer(*args, **kwargs):
        return training.train_run(*args, init_weights=next(starts) / inference.MODEL_FILE,
                                  **kwargs)

    return {"trainer": trainer, "splits": [dataio.load_json(r / "split.json") for r in parents]}


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog or "python -m lungseg_utils.runs.cv",
        description="Cross-validate one training configuration, K fold members. Each case is "
                    "scored by the member that never saw it; the members together are an "
                    "ensemble (manifest.json) that the inference command can use.")
    p.add_argument("--k", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--profile", choices=sorted(config.PROFILES),
                   help="training settings (default: $LUNGSEG_PROFILE or "
                        f"{config.DEFAULT_PROFILE})")
    p.add_argument("--data_dir", help="folder of patient_XXX/{ct,lung}.nii.gz")
    p.add_argument("--out_dir", help="where the member runs go (default results/cv)")
    p.add_argument("--seed", type=int, default=42, help="seed of the folds and the training")
    p.add_argument("--init_from", metavar="DIR",
                   help="fine-tune: member i starts from member i of the ensemble DIR, same split")
    return p


def run(args) -> int:
    """The cross-validation command on parsed ``args`` (:func:`build_parser`); bad input raises."""
    how = (fine_tuning(args.init_from, args.k) if args.init_from
           else {"trainer": training.train_run})      # each member a full run of the command
    result = ensemble.cross_validate(args.k, args.data_dir, args.out_dir, args.profile,
                                     seed=args.seed, **how)
    s = result["summary"]["dice"]
    print(f"{args.k}-fold cross-validation: out-of-fold Dice {s['mean']:.4f} ± {s['sd']:.4f}, "
          f"worst {s['worst_value']:.4f} ({s['worst_case_id']})")
    return 0


def main(argv=None, prog: str | None = None) -> int:
    """``python -m lungseg_utils.runs.cv`` (``lungseg cv``): 0 done, 2 bad input."""
    return run_command(build_parser(prog), run, argv)


if __name__ == "__main__":
    sys.exit(main())
