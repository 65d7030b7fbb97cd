"""Wall time of the one-command audit with the default suites: cold (nothing cached) and with the base cached.

    PYTHONPATH=src .venv/bin/python bench/audit_default_suites.py --tuned DIR --tuned2 DIR2

Runs ``sftlab audit --base smollm2-135m-instruct --tuned DIR`` with an empty cache dir, then for DIR2 (another
fine-tune of the same base, e.g. a TRL LoRA adapter and a TRL full fine-tune) on the same cache, so the second
run reads the base's samples and scores back and computes only DIR2's. Prints each run's wall time and its stages as the report's meta records them
(models: sampling, scoring, shift, forecast; embeddings; style), and the machine's load average, which the
figures depend on.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from sftlab.cli import main as sftlab


def one_audit(tuned: str, cache: Path, out: Path) -> dict[str, float]:
    started = time.perf_counter()
    code = sftlab(["audit", "--base", "smollm2-135m-instruct", "--tuned", tuned, "--out", str(out),
                   f"cache_dir={cache}"])
    if code != 0:
        raise SystemExit(f"audit exited {code}")
    meta = json.loads((out / "report.json").read_text())["meta"]
    return {"wall_s": round(time.perf_counter() - started, 1), "models_s": meta["model_seconds"],
            "embeddings_s": meta["embedding_seconds"], "style_s": meta["style_seconds"], "audit_s": meta["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tuned", required=True)
    parser.add_argument("--tuned2", required=True)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="audit-bench-"))
    print(f"load average before: {os.getloadavg()}")
    cold = one_audit(args.tuned, root / "cache", root / "cold")
    print(f"cold (nothing cached): {cold}")
    warm = one_audit(args.tuned2, root / "cache", root / "warm")
    print(f"base cached: {warm}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
