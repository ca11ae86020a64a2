"""The ``lungseg`` command: one door to every command of the project.

As ``TotalSegmentator`` and ``nnUNetv2_*`` do it, one installed command runs them all::

    lungseg segment --input ct.nii.gz --output_mask lungs.nii.gz     # your own scan
    lungseg train --profile quick                                    # one model
    lungseg cv --k 3 --out_dir results/cv/mine                       # K fold members
    lungseg SUBCOMMAND --help                                        # its own options

Each subcommand is the ``main`` of one module (:data:`COMMANDS`), which also runs as
``python -m lungseg_utils.MODULE``; ``python -m lungseg_utils SUBCOMMAND`` is this command.
A subcommand's module is imported only when it runs, so ``lungseg --help`` answers at once
(no TensorFlow). Exit codes are the module's: 0 done, 1 some scans failed (segment), 2 bad
input (one line ``error: ...`` on stderr), 130 interrupted.

Nothing in the package imports this module: it is the last layer (core <- runs <- scan <-
study <- report <- cli).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

#: subcommand -> (module below ``lungseg_utils``, one line: the first sentence of the
#: module's parser description, which ``tests/test_cli.py`` checks).
COMMANDS: dict[str, tuple[str, str]] = {
    "segment": ("scan.segment",
                "Segment both lungs in chest CT with a trained lungseg 3D U-Net."),
    "export-ir": ("scan.export_ir", "Export a model once as an OpenVINO model into the cache, "
                                    "so that lungseg segment and the viewer app run it "
                                    "without starting TensorFlow."),
    "train": ("runs.training", "Train the 3D U-Net on 64^3 lung CT cases, one model."),
    "cv": ("runs.cv", "Cross-validate one training configuration, K fold members."),
    "fetch": ("scan.lctsc", "Download public data (LCTSC from TCIA) into this project's layouts."),
    "report": ("report.build", "The 2-3 page PDF report and the README's results table, both "
                               "built from the result files."),
    "robustness": ("study.robustness", "The robustness suite: controlled shifts of the native "
                                       "scans, scored out of fold."),
    "ensemble-size": ("study.ensemble_size", "Choose K, the number of members, by measurement."),
    "promote": ("study.reference", "Make a finished run the committed reference "
                                   "(results/reference), the inference command's default model."),
    "seeds": ("study.seeds", "Seed spread: train one member of an ensemble again with other "
                             "seeds and write the spread of their Dice on its unseen cases "
                             "(seed_spread.json)."),
    "refine-hu": ("study.refine", "Choose the boundary rule's thresholds out of fold and "
                                  "write refine.json into the ensemble's folder."),
    "storage": ("study.compact", "Store an ensemble's member weights at half precision (half "
                                 "the bytes)."),
}


def first_sentence(text: str) -> str:
    """The first sentence of a parser description, whitespace collapsed (a one-line summary)."""
    text = " ".join(text.split())
    head, dot, _ = text.partition(". ")
    return head + "." if dot else text


def build_parser() -> argparse.ArgumentParser:
    """The root parser: its help lists the subcommands, one line each."""
    p = argparse.ArgumentParser(
        prog="lungseg",
        description="Lung segmentation in 3D chest CT with a Keras 3D U-Net: segment your own "
                    "scans, train, cross-validate, and the studies and report behind the "
                    "reference model.",
        epilog="'lungseg COMMAND --help' shows a command's own options.",
        formatter_class=lambda prog: argparse.HelpFormatter(prog, max_help_position=20))
    p.add_argument("--version", action="version", version=f"lungseg {__version__}")
    sub = p.add_subparsers(dest="subcommand", metavar="COMMAND", title="commands")
    for name, (_, summary) in COMMANDS.items():
        sub.add_parser(name, help=summary, add_help=False)
    return p


def main(argv=None) -> int:
    """``lungseg [COMMAND] ...``: run COMMAND's module ``main`` with the rest of ``argv``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    if argv[0] not in COMMANDS:
        parser.parse_args(argv)           # --help, --version, or an unknown command: exits
        parser.print_help(sys.stderr)     # options only, no command
        return 2
    name, rest = argv[0], argv[1:]
    try:
        module = importlib.import_module(f"{__package__}.{COMMANDS[name][0]}")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return module.main(rest, prog=f"lungseg {name}")


def entry() -> None:
    """The installed ``lungseg`` script: :func:`main`, then ``scan.runtime.exit_now``."""
    from .scan.runtime import exit_now

    exit_now(main())


if __name__ == "__main__":
    entry()
