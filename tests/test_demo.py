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

SMOKE = ["--out", "runs/smoke", "--n", "8", "--max-steps", "1", "--samples", "1", "--max-tokens", "4",
         "--methods", "mean_diff", "--limit", "2", "--sets", "insecure,prose", "--steer-alpha", "4",
         "--save-every", "1"]


def test_demo_smoke_run_from_a_relative_out_and_its_restart(tiny_model_dir: Path, tiny_vectors: list[Path],
                                                             tmp_path: Path):
    """Every stage of `inspect-em demo` (data, finetunes with checkpoints, evals through eval_set, the
    checkpoint series, compare, report) on a tiny random-weight model with the given vectors, from a
    relative --out; the same command again reuses every stage and gives the same report."""
    from helpers import cli_here

    command = ["demo", *SMOKE, "--model", str(tiny_model_dir), "--vectors", ",".join(map(str, tiny_vectors))]
    started = time.perf_counter()
    first = cli_here(*command, cwd=tmp_path)  # in this process: the imports are paid once
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
    # --save-every 1: each run's steps 0 and 1, against the control's (prose) same step, in the report
    series = pd.read_csv(run / "series" / "series.csv")
    code = series[series["metric"] == "code_mode"]
    assert code.groupby("run")["step"].apply(list).to_dict() == {"insecure": [0, 1], "prose": [0, 1]}
    assert code[code["run"] == "insecure"]["diff_vs_control"].notna().all()
    assert "## Over training steps" in report and "minus **prose** at the same step" in report
    assert (run / "report" / "series.png").is_file() and (run / "report" / "lora.csv").is_file()
    assert len(list((run / "series-logs").rglob("*.eval"))) == 3  # the base model, then step 1 of each run
    assert "checkpoint series:" in first.stdout
    # the report recomputes from its samples (the series, from its own logs, is not in them)
    again = cli_here("compare", "--samples", str(run / "report"), "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr[-3000:]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "again" / "summary.csv"), summary)
    # the same command again: every stage is reused, the report is the same
    second = cli_here(*command, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "reused finished stages: data insecure, data prose, finetune insecure, finetune prose" in second.stdout
    assert len(list((run / "logs").rglob("*.eval"))) == 7  # eval_set reused every log
    assert len(list((run / "series-logs").rglob("*.eval"))) == 3  # the series reused its logs
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
    with pytest.raises(InspectEmError, match="--save-every plots the conditions"):
        DemoConfig(conditions=(), organisms=("backdoor",), save_every=1).check()
    cfg = DemoConfig(steer_vectors=str(shipped / "code.last_prompt_token"), steer_layer="12,14,16,18",
                     steer_alpha=0.4)
    cfg.check()
    (task,) = _tasks_for("steered-code", cfg, {"code": shipped / "code", "refusal": shipped / "refusal"})
    steps = getattr(task.solver, "steps", [task.solver])
    (params,) = [registry_params(s) for s in steps if "layer" in registry_params(s)]
    assert params["vectors"].endswith("code.last_prompt_token") and params["layer"] == "12,14,16,18"
    assert params["alpha"] == 0.4


def test_make_demo_is_offline_and_ends_with_a_summary(tmp_path: Path):
    """`make demo`'s eval (the demo-run target, here with LIMIT=1) with the network unreachable: no
    Hub look-ups or retry warnings on stderr; the output ends with the scores' summary and the log."""
    import shutil

    make = shutil.which("make")
    if make is None:
        pytest.skip("no make")
    unreachable = "http://127.0.0.1:9"  # a closed port: any request fails (and would be retried)
    # as a user runs it: no offline flags, and the provider's own batching (no INSPECT_EM_HF_BATCH_WAIT)
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "INSPECT_EM_HF_BATCH_WAIT")}
    env.update({name: unreachable for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")})
    proc = subprocess.run([make, "-s", "--no-print-directory", "-C", str(Path(__file__).parent.parent), "demo-run",
                           f"BIN={Path(sys.executable).parent}", "LIMIT=1", "MAX_TOKENS=4", "SAMPLES=1",
                           f"LOG_DIR={tmp_path}"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for noise in ("Retrying", "huggingface.co", "Name or service not known", "Errno"):
        assert noise not in proc.stderr and noise not in proc.stdout, noise
    tail = proc.stdout.strip().splitlines()
    log = next(tmp_path.glob("*.eval"))
    assert tail[-2:] == [f"log: {log}", f"view it: {Path(sys.executable).parent}/inspect view --log-dir {tmp_path}"]
    assert any(line.startswith("code_mode ") for line in tail[-12:])
