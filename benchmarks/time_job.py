"""Time one step of the main or the test command into ``benchmarks/job_timings.json``.

    python benchmarks/time_job.py NAME -- COMMAND [ARGS...]

Runs COMMAND (its output passes through), then records under ``jobs[NAME]``: wall time,
exit status, peak memory of its largest process (``RUSAGE_CHILDREN``; a notebook's kernel
included once it has exited), ``$LUNGSEG_PROFILE`` and the time it finished
(``$LUNGSEG_JOB_TIMINGS`` names another file). Exits with
COMMAND's status, so a Makefile loop stops on a failure as before. ``benchmarks/run.py``
reads the file; nothing here measures anything else.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

TIMINGS = Path(os.environ.get("LUNGSEG_JOB_TIMINGS")
               or Path(__file__).resolve().parent / "job_timings.json")


def record(name: str, entry: dict, path: Path = TIMINGS) -> Path:
    """Merge ``entry`` into ``path``'s ``jobs[name]`` (written atomically)."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("jobs", {})[name] = entry
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
    return path


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    name, cmd = argv[0], argv[2:]
    t0 = time.perf_counter()
    rc = subprocess.call(cmd)
    wall = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    record(name, {"wall_s": round(wall, 1), "rc": rc, "peak_rss_mib": round(peak_kib / 1024, 1),
                  "profile": os.environ.get("LUNGSEG_PROFILE") or "default",
                  "finished": _dt.datetime.now().isoformat(timespec="seconds"),
                  "command": " ".join(cmd)})
    return rc


if __name__ == "__main__":
    sys.exit(main())
