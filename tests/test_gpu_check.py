"""`make gpu-check`'s script cannot rot: the tiny shape on the CPU runs every stage in seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_tiny_on_cpu_runs_every_stage(tmp_path: Path, embedded_model_path: Path):
    out = tmp_path / "check.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--shape", "tiny", "--device", "cpu", "--budget", "600",
         "--out", str(out), "--prompts", "16", "--samples", "2", "--max-tokens", "8", "--finetune-steps", "2",
         "--rounds", "1", "--tokenizer", str(embedded_model_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads(out.read_text(encoding="utf-8"))
    stages = record["stages"]
    assert list(stages) == ["build", "capture", "extraction", "steering", "save", "eval_overhead", "agreement",
                            "finetune", "finetune_unsloth"]
    assert all(entry["status"] == "ok" for name, entry in stages.items() if name != "finetune_unsloth"), stages
    assert stages["finetune_unsloth"]["status"] == "skipped"
    assert stages["extraction"]["settings"] == {"null_k": 50, "random_k": 1000, "cv_folds": 5}
    assert stages["steering"]["unsteered_identical"] and stages["steering"]["hooks_after"] == \
        stages["steering"]["hooks_before"] < stages["steering"]["hooks_during"]
    # float32 on both paths here: the captured projections equal a teacher-forced re-read
    assert stages["agreement"]["bf16_vs_float32_rel_error_max"] < 1e-4
    assert stages["agreement"]["added_norm_rel_error_max"] < 1e-6
    assert "| extraction | ok |" in proc.stdout
