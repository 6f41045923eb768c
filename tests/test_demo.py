"""A fast end-to-end smoke run of `inspect-em demo` from a relative --out in a temporary working
directory (the README's full run is `make em-demo`), and its restart."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

SMOKE = ["--out", "runs/smoke", "--n", "8", "--max-steps", "2", "--samples", "1", "--max-tokens", "8",
         "--layers", "20,22", "--methods", "mean_diff", "--limit", "4", "--sets", "insecure,prose",
         "--steer-alpha", "4"]


@pytest.mark.slow
def test_demo_smoke_run_from_a_relative_out_and_its_restart(embedded_model_path: Path, tmp_path: Path):
    env = {**os.environ, "PWD": str(tmp_path), "COLUMNS": "200"}
    started = time.perf_counter()
    first = subprocess.run([sys.executable, "-m", "inspect_em.cli", "demo", *SMOKE], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=900)
    elapsed = time.perf_counter() - started
    assert first.returncode == 0, first.stderr[-3000:]
    print(f"demo smoke run: {elapsed:.0f} s")
    run = tmp_path / "runs" / "smoke"
    report = (run / "report" / "report.md").read_text()
    assert report.splitlines()[0] == "# inspect_em comparison"
    for label in ("insecure", "prose", "steered-code"):
        assert f"### {label}" in report, label
    summary = pd.read_csv(run / "report" / "summary.csv")
    assert set(summary["model"]) == {"base", "steered-code", "insecure", "prose"}
    assert set(summary["task"]) == {"em_freeform", "refusal_contrast"}
    assert (run / "models" / "insecure" / "merged" / "config.json").is_file()
    logs = list((run / "logs").rglob("*.eval"))
    assert len(logs) == 7  # base, insecure, prose: two tasks each; steered: em_freeform
    # the same command again: every stage is reused, the report is the same
    second = subprocess.run([sys.executable, "-m", "inspect_em.cli", "demo", *SMOKE], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "reused finished stages: data insecure, data prose, finetune insecure, finetune prose" in second.stdout
    assert len(list((run / "logs").rglob("*.eval"))) == 7  # eval_set reused every log
    pd.testing.assert_frame_equal(pd.read_csv(run / "report" / "summary.csv"), summary)
