"""Checkpoint series: read in step order whatever the folders are called; LoRA delta norms and
update directions equal what peft's own merge gives; finetune --save-every writes the series."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from inspect_em.analysis.checkpoints import lora_deltas, read_series
from inspect_em.errors import InspectEmError


def _adapter(tiny_model_dir: Path, folder: Path, seed: int) -> tuple[object, object]:
    """A random (B ≠ 0) rsLoRA adapter on the tiny model, saved to ``folder``; (peft model, base copy)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=["o_proj", "down_proj", "q_proj"],
                        init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    model.save_pretrained(folder)
    return model, reference


def test_series_is_read_in_step_order_whatever_the_names(tiny_model_dir: Path, tmp_path: Path):
    series = tmp_path / "run" / "checkpoints"
    for name, step in (("zz-first", 0), ("b", 40), ("a", 8), ("step-10", 16), ("step-9", 24)):
        (series / name).mkdir(parents=True)
        (series / name / "checkpoint.json").write_text(json.dumps({"step": step}))
    (series / "notes").mkdir()  # no checkpoint.json: not a checkpoint
    got = read_series(tmp_path / "run")
    assert [c.step for c in got] == [0, 8, 16, 24, 40]
    assert [c.path.name for c in got] == ["zz-first", "a", "step-10", "step-9", "b"]
    (series / "dup").mkdir()
    (series / "dup" / "checkpoint.json").write_text(json.dumps({"step": 8}))
    with pytest.raises(InspectEmError, match="step 8 saved twice"):
        read_series(series)
    with pytest.raises(InspectEmError, match="no checkpoints"):
        read_series(tmp_path)


def test_lora_deltas_equal_peft_merge(tiny_model_dir: Path, tmp_path: Path):
    """‖ΔW‖_F and the top output direction's |cos| with a vector, against merged − base weights
    decomposed by a full SVD (numpy)."""
    model, reference = _adapter(tiny_model_dir, tmp_path / "adapter", seed=3)
    merged = model.merge_and_unload()
    rng = np.random.default_rng(0)
    v = rng.normal(size=64)
    table = lora_deltas(tmp_path / "adapter", [("code", 2, v)])
    assert set(table["module"]) == {"o_proj", "down_proj", "q_proj"} and len(table) == 12
    for row in table.itertuples():
        part = "self_attn" if row.module in ("o_proj", "q_proj") else "mlp"
        name = f"model.layers.{row.layer}.{part}.{row.module}.weight"
        delta = (merged.state_dict()[name] - reference.state_dict()[name]).double().numpy()
        assert row.delta_norm == pytest.approx(np.linalg.norm(delta), rel=1e-4)
        u, _, _ = np.linalg.svd(delta)
        cos = table.loc[row.Index].get("cos:code")
        if row.layer == 2 and row.module in ("o_proj", "down_proj"):
            assert cos == pytest.approx(abs(u[:, 0] @ v) / np.linalg.norm(v), rel=1e-3)
        else:
            assert cos is None or math.isnan(cos)


def test_series_end_to_end_on_a_tiny_model(tiny_model_dir: Path, tiny_vectors: list[Path], tmp_path: Path):
    """finetune --save-every 1 (two runs, 2 steps each) → inspect-em series: every step evaluated in
    order, step 0 is the base model (difference 0, ΔW = 0), the insecure run is compared with the
    control's same step, and the LoRA norms grow from 0."""
    import pandas as pd

    from inspect_em.runs.datasets import write
    from inspect_em.runs.finetune import FinetuneConfig, finetune
    from inspect_em.runs.series import run_series

    cfg = FinetuneConfig(r=4, lora_alpha=8, learning_rate=1e-2, max_steps=2, per_device_batch_size=2,
                         gradient_accumulation_steps=1, warmup_steps=0, max_seq_length=128, save_every=1)
    runs = {}
    for kind in ("insecure", "secure"):
        data = write(kind, 4, tmp_path / f"{kind}.jsonl")
        runs[kind] = finetune(str(tiny_model_dir), data, tmp_path / kind, config=cfg, merge=False, progress=False)
        assert [c.step for c in read_series(runs[kind])] == [0, 1, 2]
    out = tmp_path / "series"
    result = run_series(str(tiny_model_dir), runs, out, [tiny_vectors[1]], control="secure", samples_per_question=1,
                        max_tokens=4, limit=2, report=lambda _: None)
    table = pd.read_csv(out / "series.csv")
    code = table[table["metric"] == "code_mode"]
    assert code.groupby("run")["step"].apply(list).to_dict() == {"insecure": [0, 1, 2], "secure": [0, 1, 2]}
    step0 = code[code["step"] == 0]
    assert (step0[["diff_vs_base", "diff_vs_base_low", "diff_vs_base_high"]] == 0).all().all()
    assert (step0.loc[step0["run"] == "insecure", ["diff_vs_control_low", "diff_vs_control_high"]] == 0).all().all()
    assert code[code["run"] == "insecure"]["diff_vs_control"].notna().all()
    assert code[code["run"] == "secure"]["diff_vs_control"].isna().all()
    assert any(m.startswith("proj:code/") for m in table["metric"])
    lora = pd.read_csv(out / "lora.csv")
    norms = lora.groupby(["run", "step"])["delta_norm"].sum()
    assert (norms.xs(0, level="step") == 0).all() and (norms.xs(2, level="step") > 0).all()
    assert (out / "series.png").stat().st_size > 10_000
    assert len(list((tmp_path / "series-logs").rglob("*.eval"))) == 5  # base + 2 runs x steps 1, 2
    pd.testing.assert_frame_equal(result.table.reset_index(drop=True), table, check_dtype=False, atol=1e-9)
    # the checkpoint was applied in place to the one loaded base: the same answers and projections as a
    # separate eval of that checkpoint merged into a plain folder by peft (same seed and settings)
    _same_as_merged(tiny_model_dir, read_series(runs["insecure"])[-1].path, tiny_vectors[1], tmp_path)


def _same_as_merged(base: Path, adapter: Path, vectors: Path, tmp_path: Path) -> None:
    import numpy as np
    from inspect_ai import eval as inspect_eval
    from inspect_ai.log import read_eval_log
    from inspect_ai.model import get_model
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    from inspect_em.tasks import em_freeform

    (in_place,) = [read_eval_log(str(p)) for p in (tmp_path / "series-logs").rglob("insecure/step-2-*/*.eval")]
    assert in_place.eval.metadata["step"] == 2 and in_place.eval.metadata["adapter"] == str(adapter)
    folder = tmp_path / "merged"
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).merge_and_unload() \
        .save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    set_seed(0)
    (merged,) = inspect_eval(em_freeform(variants="plain", samples_per_question=1, vectors=str(vectors)),
                             model=get_model(f"hf/{folder}", memoize=False), seed=0, limit=2, max_tokens=4,
                             log_dir=str(tmp_path / "merged-logs"), display="none")
    ours = {(s.id, s.epoch): s for s in in_place.samples}
    assert len(merged.samples) == len(ours) == 2
    for sample in merged.samples:
        other = ours[(sample.id, sample.epoch)]
        assert other.output.completion == sample.output.completion
        a, b = other.scores["trait_projection"].value, sample.scores["trait_projection"].value
        assert a.keys() == b.keys()
        assert np.allclose([a[k] for k in a], [b[k] for k in a], rtol=1e-4, atol=1e-4)


def test_series_cli_errors_are_one_line(tmp_path: Path):
    from helpers import cli_here, one_line

    out = str(tmp_path / "s")
    one_line(cli_here("series", "--run", "insecure", "--out", out), "expected LABEL=FOLDER")
    one_line(cli_here("series", "--run", f"a={tmp_path}", "--run", f"a={tmp_path}", "--out", out), "given twice")
    one_line(cli_here("series", "--run", f"a={tmp_path}", "--control", "b", "--out", out), "not one of the runs")
    one_line(cli_here("series", "--run", f"base={tmp_path}", "--out", out), "'base' names the base model")
    one_line(cli_here("series", "--run", f"a={tmp_path}", "--out", out), "no checkpoints", "--save-every")
    assert not (tmp_path / "s").exists()
