"""Test-session settings: small profile, figures and runs out of the repository's way."""

import os
import tempfile

os.environ.setdefault("LUNGSEG_PROFILE", "smoke")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if "LUNGSEG_FIGURES_DIR" not in os.environ:
    os.environ["LUNGSEG_FIGURES_DIR"] = tempfile.mkdtemp(prefix="lungseg_figures_")
if "LUNGSEG_RUNS_DIR" not in os.environ:
    os.environ["LUNGSEG_RUNS_DIR"] = tempfile.mkdtemp(prefix="lungseg_runs_")
