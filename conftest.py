"""Test-session settings: small profile, figures and runs out of the repository's way.

``LUNGSEG_RUN`` names a folder that does not exist yet: notebook 04 (under nbval) trains a
smoke run into it, and notebooks 05, 06 and the viewer then evaluate that run, as the main
job does with its own run (the committed reference is never written to)."""

import os
import tempfile

os.environ.setdefault("LUNGSEG_PROFILE", "smoke")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if "LUNGSEG_FIGURES_DIR" not in os.environ:
    os.environ["LUNGSEG_FIGURES_DIR"] = tempfile.mkdtemp(prefix="lungseg_figures_")
if "LUNGSEG_RUNS_DIR" not in os.environ:
    os.environ["LUNGSEG_RUNS_DIR"] = tempfile.mkdtemp(prefix="lungseg_runs_")
if "LUNGSEG_CACHE" not in os.environ:     # no OpenVINO model from the user's cache
    os.environ["LUNGSEG_CACHE"] = tempfile.mkdtemp(prefix="lungseg_cache_")
if "LUNGSEG_RUN" not in os.environ:
    os.environ["LUNGSEG_RUN"] = os.path.join(tempfile.mkdtemp(prefix="lungseg_run_"), "main")
