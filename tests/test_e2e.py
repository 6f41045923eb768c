"""The one end-to-end test on the embedded model (budget 90 s): the README's main path, em_freeform
with the shipped code and refusal vectors, once plain and once steered along the code vector (the
positive control), then ``inspect-em compare`` and ``inspect-em summary`` on the logs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import cli_here
from inspect_ai import eval as inspect_eval
from inspect_ai.log import read_eval_log
from inspect_ai.model import get_model

V = Path(__file__).parent.parent / "vectors" / "SmolLM2-135M-Instruct"
CODE_KEY = "code/mean_diff/L12"  # the code card's layer (response mean)


@pytest.mark.e2e
def test_em_freeform_with_vectors_then_compare_finds_the_positive_control(embedded_model_path: Path,
                                                                        tmp_path: Path):
    from inspect_em import steer

    model = get_model(f"hf/{embedded_model_path}")
    args = {"variants": "plain", "samples_per_question": 1, "vectors": f"{V / 'code'},{V / 'refusal.response_mean'}"}
    logs = {}
    for label, solver in (("base", None), ("steered", steer(vectors=str(V / "code"), alpha=4.0))):
        log = inspect_eval("inspect_em/em_freeform", task_args=args, solver=solver, model=model, max_tokens=24,
                           seed=1, log_dir=str(tmp_path / label), display="none")[0]
        assert log.status == "success", log.error
        logs[label] = read_eval_log(log.location)
    out = tmp_path / "report"
    proc = cli_here("compare", str(tmp_path / "base"), str(tmp_path / "steered"), "--label", "base",
                    "--label", "steered", "--out", str(out))
    assert proc.returncode == 0, proc.stderr

    # compare's means are the logs' own per-sample values (read here with Inspect's reader)
    values = {label: pd.Series({s.metadata["base_question_id"]: s.scores["trait_projection"].value[CODE_KEY]
                                for s in log.samples}) for label, log in logs.items()}
    assert len(values["base"]) == len(values["steered"]) == 8  # the eight questions, one answer each
    summary = pd.read_csv(out / "summary.csv")
    rows = summary[(summary["group"] == "(all)") & (summary["metric"] == f"proj:{CODE_KEY}")].set_index("model")
    for label in ("base", "steered"):
        assert rows.loc[label, "mean"] == pytest.approx(values[label].mean(), rel=1e-5)
        assert rows.loc[label, "n"] == 8
    # the positive control: steering along code moves its projection, paired by question, CI above 0
    paired = values["steered"] - values["base"].reindex(values["steered"].index)
    steered = rows.loc["steered"]
    assert steered["diff_vs_base"] == pytest.approx(paired.mean(), rel=1e-5)
    assert 0 < steered["diff_ci_low"] < paired.mean() < steered["diff_ci_high"]
    assert paired.min() > 0  # every question's answer moved the same way
    refusal = summary[(summary["group"] == "(all)") & summary["metric"].str.startswith("proj:refusal/")]
    assert set(refusal["model"]) == {"base", "steered"} and np.isfinite(refusal["mean"]).all()
    assert "## Headline" in (out / "report.md").read_text()

    # the end of `make demo`: one screen of the base log's scores
    shown = cli_here("summary", logs["base"].location)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "em_freeform on hf/" in lines[0] and "8 samples, success" in lines[0]
    code_mode = next(line for line in lines if line.startswith("code_mode "))
    assert float(code_mode.split()[1]) == pytest.approx(np.mean([s.scores["code_mode"].value
                                                                 for s in logs["base"].samples]), abs=1e-3)
    assert len(lines) <= 25
