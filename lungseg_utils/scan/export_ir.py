"""``lungseg export-ir``: export a model once to OpenVINO (:mod:`.openvino_ir`), so that
``lungseg segment`` and the viewer app run it without starting TensorFlow::

    lungseg export-ir                               # the reference
    lungseg export-ir --model results/models/main_YYYYMMDD-HHMMSS
"""

from __future__ import annotations

import argparse
import sys

from ..runs.command import run_command
from . import openvino_ir


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog or "python -m lungseg_utils.scan.export_ir",
        description="Export a model once as an OpenVINO model into the cache, so that "
                    "lungseg segment and the viewer app run it without starting TensorFlow. "
                    "The cache is $LUNGSEG_CACHE, else ~/.cache/lungseg.")
    p.add_argument("--model", default=None, help="a .keras file or an ensemble folder "
                                                 "(default: results/reference)")
    return p


def run(args) -> int:
    """The command on parsed ``args``; bad input raises."""
    print(f"wrote {openvino_ir.export_ir(args.model)}")
    return 0


def main(argv=None, prog: str | None = None) -> int:
    """``lungseg export-ir``: 0 done, 2 bad input."""
    return run_command(build_parser(prog), run, argv)


if __name__ == "__main__":
    sys.exit(main())
