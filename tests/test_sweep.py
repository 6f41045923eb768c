"""steer-sweep: the table, the plots, and the card's causal section (on a tiny random-weight model
with its own code vector: the bookkeeping does not depend on trained weights)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from inspect_em.directions import store as vector_store

ROOT = Path(__file__).parent.parent
CODE = ROOT / "vectors" / "SmolLM2-135M-Instruct" / "code"


def test_code_sweep_writes_table_plots_and_card(tiny_model_dir: Path, tiny_vectors: list[Path], tmp_path: Path):
    from inspect_em.runs.sweep import run_sweep

    vectors = tmp_path / "code"
    shutil.copytree(tiny_vectors[1], vectors)
    tv = vector_store.load(vectors)
    layer = tv.best_layer("mean_diff")
    result = run_sweep(str(tiny_model_dir), vectors, layers="best", alphas=[8.0], samples=1, max_tokens=12, limit=4,
                       out=tmp_path / "sweep", update_card=True)
    table = pd.read_csv(tmp_path / "sweep" / "causal.csv")
    assert list(table["alpha"]) == [0.0, 8.0] and set(table["layer"]) == {layer}
    assert table["n"].tolist() == [4, 4]
    steered = table[table["alpha"] == 8.0].iloc[0]
    # the steered pass adds 8 x the fit mean-difference norm along v at the card layer
    assert steered["shift"] > 0.5 * 8.0 * tv.mean_diff_norm(layer)
    assert steered["shift_low"] <= steered["shift"] <= steered["shift_high"]
    assert 0.0 <= steered["coherent_rate"] <= 1.0 and steered["median_perplexity"] > 1.0
    assert (tmp_path / "sweep" / "causal.png").is_file() and (tmp_path / "sweep" / "calibration.png").is_file()
    card = json.loads((vectors / "card.json").read_text())
    assert card["causal"]["add"]["calibration_layer"] == layer == card["causal"]["projection_layer"]
    assert [p[0] for p in card["causal"]["calibration"]] == [0.0, 8.0]
    assert result.summary["unsteered_rate"] == pytest.approx(table["rate"].iloc[0])
    assert vector_store.load(vectors).best_layer("mean_diff") == layer  # the held-out choice is kept beside it


def test_ablate_sweep_keeps_an_unsteered_reference():
    """The ablate sweep's first task is the unsteered model (no steer solver), its second ablates."""
    from inspect_ai._util.registry import registry_info

    from inspect_em.runs.sweep import _tasks

    refusal = ROOT / "vectors" / "SmolLM2-135M-Instruct" / "refusal"
    unsteered, ablated = _tasks("refusal", refusal, [(27, 0.0), (27, 1.0)], "ablate", 1, 8, None)

    def solvers(task) -> list[str]:
        steps = getattr(task.solver, "steps", [task.solver])
        return [registry_info(s).name for s in steps]

    assert "inspect_em/steer" not in solvers(unsteered)
    assert "inspect_em/steer" in solvers(ablated)


def test_joint_sweep_calibrates_on_the_joint_label_and_steers_every_layer():
    """A joint (multi-layer) sweep: one steer solver over all its layers; the summary's
    calibration curve and causal layer are the joint label's rows, not the base row's layer."""
    from inspect_ai._util.registry import registry_params

    from inspect_em.runs.sweep import _summary, _tasks

    lpt = ROOT / "vectors" / "SmolLM2-135M-Instruct" / "code.last_prompt_token"
    base, steered = _tasks("code", lpt, [(28, 0.0), ("12+16", 0.5)], "add", 1, 8, None)
    steps = getattr(steered.solver, "steps", [steered.solver])
    params = [registry_params(s) for s in steps if "layer" in registry_params(s)]
    assert params and params[0]["layer"] == "12,16" and params[0]["alpha"] == 0.5
    assert "12_16" in steered.name
    rows = [(28, 0.0, 0.0, 0.0, 1.0), ("12+16", 0.5, 0.25, 40.0, 0.9), ("12+16", 1.0, 0.75, 90.0, 0.4)]
    table = pd.DataFrame([{"layer": lay, "alpha": a, "rate": r, "rate_low": 0.0, "rate_high": 1.0, "shift": s,
                           "coherent_rate": c, "behaviour": "code_mode"} for lay, a, r, s, c in rows])
    summary = _summary(table, "code", "add", 28)
    assert summary["calibration_layer"] == "12+16" and summary["projection_layer"] == 28  # read at the card's
    assert [p[:3] for p in summary["calibration"]] == [[0.0, 0.0, 0.0], [0.5, 40.0, 0.25], [1.0, 90.0, 0.75]]
    assert summary["best_layer"] == "12+16" and summary["best_layer_effect"] == 0.25  # the coherent cell only
    assert summary["calibrated_alpha"] is None  # 0.75 code mode, but only 40% coherent there


def test_sweep_settings_errors_come_before_any_eval(tmp_path: Path):
    from inspect_em.errors import InspectEmError
    from inspect_em.runs.sweep import run_sweep

    with pytest.raises(InspectEmError, match="needs a non-zero alpha"):
        run_sweep("embedded", CODE, alphas=[0.0], out=tmp_path / "s")
    with pytest.raises(InspectEmError, match="joint .* applies to mode add"):
        run_sweep("embedded", CODE, layers="10,12", joint=True, mode="ablate", out=tmp_path / "s")
    assert not (tmp_path / "s").exists()
