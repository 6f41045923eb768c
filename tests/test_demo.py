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


def test_positive_control_steering_is_configurable_and_checked_up_front(tmp_path: Path):
    """``--steer-vectors`` / ``--steer-layer``: a bad folder or layer fails at the config check
    (before any data or finetune); a good one steers the positive control with those vectors at
    those layers, read by the run's own code vector."""
    from inspect_ai._util.registry import registry_params

    from inspect_em.errors import InspectEmError
    from inspect_em.runs.demo import DemoConfig, _tasks_for

    shipped = Path(__file__).parent.parent / "vectors" / "SmolLM2-135M-Instruct"
    with pytest.raises(InspectEmError, match="missing: trait-vector folder not found"):
        DemoConfig(steer_vectors=str(tmp_path / "missing")).check()
    with pytest.raises(InspectEmError, match="no vector at layer 40"):
        DemoConfig(steer_vectors=str(shipped / "code.last_prompt_token"), steer_layer="12,40", steer_alpha=1).check()
    with pytest.raises(InspectEmError, match="not 'all'"):
        DemoConfig(steer_layer="all").check()
    with pytest.raises(InspectEmError, match="cannot parse 'x'"):
        DemoConfig(steer_layer="x").check()
    with pytest.raises(InspectEmError, match="needs a steer alpha"):
        DemoConfig(steer_layer="12,14").check()
    cfg = DemoConfig(steer_vectors=str(shipped / "code.last_prompt_token"), steer_layer="12,14,16,18",
                     steer_alpha=0.4)
    cfg.check()
    (task,) = _tasks_for("steered-code", cfg, {"code": shipped / "code", "refusal": shipped / "refusal"})
    steps = getattr(task.solver, "steps", [task.solver])
    (params,) = [registry_params(s) for s in steps if "layer" in registry_params(s)]
    assert params["vectors"].endswith("code.last_prompt_token") and params["layer"] == "12,14,16,18"
    assert params["alpha"] == 0.4
