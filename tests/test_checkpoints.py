"""Checkpoint series: read in step order whatever the folders are called; LoRA delta norms and
update directions equal what peft's own merge gives; finetune --save-every writes the series."""

from __future__ import annotations

import json
import math
import shutil
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
    # each checkpoint's log names it, and its adapter was applied: the same seed as the base model's eval,
    # other projections (that the in-place adapter is the merged model is test_lora_applied_...)
    from inspect_ai.log import read_eval_log

    logs = {p.parent.parent.name + "/" + p.parent.name.split("-")[1]: read_eval_log(str(p))
            for p in (tmp_path / "series-logs").rglob("step-*/*.eval")}
    base_log = read_eval_log(str(next((tmp_path / "series-logs").rglob("base/*.eval"))))
    assert sorted(logs) == ["insecure/1", "insecure/2", "secure/1", "secure/2"]
    step2 = logs["insecure/2"]
    assert step2.eval.metadata["series_run"] == "insecure" and step2.eval.metadata["step"] == 2
    assert step2.eval.metadata["adapter"] == str(read_series(runs["insecure"])[-1].path)

    def projections(log) -> dict:
        return {(s.id, s.epoch): s.scores["trait_projection"].value for s in log.samples}

    a, b = projections(base_log), projections(step2)
    assert a.keys() == b.keys()
    assert max(abs(a[k][m] - b[k][m]) for k in a for m in a[k]) > 1e-3
    # compare tells the checkpoints apart although every log names the same hf/ model: each default
    # label names its checkpoint, and one label over them all would pool different models
    from inspect_em.analysis.logs import read_logs

    (folder,) = [p for p in (tmp_path / "series-logs").iterdir() if p.is_dir()]  # the settings folder
    infos = read_logs([folder])
    assert sorted(i.label for i in infos) == sorted([tiny_model_dir.name] + [f"{tiny_model_dir.name}.{r}.step{k}"
                                                                             for r in ("insecure", "secure")
                                                                             for k in (1, 2)])
    with pytest.raises(InspectEmError, match="would pool two models"):
        read_logs([folder], labels=["all"])
    # compare takes the series' logs folder: the same table against step (its base: the series' base
    # log), the LoRA deltas read from the adapters the logs name, and a --samples recompute reproduces it
    from helpers import cli_here

    report = tmp_path / "report"
    proc = cli_here("compare", str(folder), "--series-control", "secure", "--out", str(report))
    assert proc.returncode == 0, proc.stderr
    from_compare = pd.read_csv(report / "series.csv")
    pd.testing.assert_frame_equal(from_compare, table, check_dtype=False, atol=1e-9)
    compared_lora = pd.read_csv(report / "lora.csv")
    expected_lora = lora[lora["step"] > 0].sort_values(["run", "step", "module", "layer"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(compared_lora.sort_values(["run", "step", "module", "layer"])
                                  .reset_index(drop=True)[expected_lora.columns], expected_lora,
                                  check_dtype=False, atol=1e-6)
    text = (report / "report.md").read_text()
    assert "## Over training steps" in text and "steps 0, 1, 2" in text and "![series.png]" in text
    assert f"Base model: **{tiny_model_dir.name}**" in text
    again = tmp_path / "report-again"
    proc = cli_here("compare", "--samples", str(report), "--out", str(again))  # the folder, or its parquet
    assert proc.returncode == 0, proc.stderr
    assert (again / "series.csv").read_bytes() == (report / "series.csv").read_bytes()
    assert (again / "lora.csv").read_bytes() == (report / "lora.csv").read_bytes()
    # the values, from the logs themselves: each step's mean projection (they differ by checkpoint), and
    # its difference from the base model's
    (metric,) = [m for m in from_compare["metric"].unique() if m.startswith("proj:code/")]
    key = metric.removeprefix("proj:")

    def mean(log) -> float:
        return float(np.mean([s.scores["trait_projection"].value[key] for s in log.samples]))

    rows = from_compare[from_compare["metric"] == metric].set_index(["run", "step"])
    for name, log in logs.items():
        run, step = name.split("/")
        assert rows.loc[(run, int(step)), "value"] == pytest.approx(mean(log), rel=1e-5)  # %.6g in the CSV
        assert rows.loc[(run, int(step)), "diff_vs_base"] == pytest.approx(mean(log) - mean(base_log), rel=1e-5)
    assert len({round(mean(log), 6) for log in logs.values()}) == len(logs)  # four different checkpoints
    # an adapter retrained after its eval (its digest no longer the log's): no LoRA table, and a note
    from inspect_em.analysis.checkpoints import series_lora
    from inspect_em.analysis.logs import series_steps

    infos = read_logs([folder])
    steps = series_steps(infos)
    table_again, _, notes = series_lora(infos, steps)
    assert table_again is not None and not notes
    for info in infos:
        info.adapter = "0" * 12 if info.adapter else None
    assert series_lora(infos, steps)[0] is None and "retrained after its eval" in series_lora(infos, steps)[2][0]
    # two labels for one point of a series are refused
    twice = read_logs([folder])
    twice[0].series, twice[1].series = ("insecure", 1), ("insecure", 1)
    with pytest.raises(InspectEmError, match="both insecure step 1"):
        series_steps(twice)
    # a checkpoint retrained (here: a log folder of a digest no run has now) loses its old logs when the
    # series runs again; other folders are left alone
    stale, other = folder / "insecure" / "step-1-0123456789ab", folder / "insecure" / "notes"
    shutil.copytree(next((folder / "insecure").glob("step-1-*")), stale)
    other.mkdir()
    run_series(str(tiny_model_dir), runs, out, [tiny_vectors[1]], control="secure", samples_per_question=1,
               max_tokens=4, limit=2, report=lambda _: None)
    assert not stale.exists() and other.is_dir()
    assert len(list((tmp_path / "series-logs").rglob("*.eval"))) == 5
    # checkpoints without the series' base-model log: refused, not read against a checkpoint
    from helpers import one_line

    one_line(cli_here("compare", str(folder / "insecure"), str(folder / "secure"), "--out", str(tmp_path / "x")),
             "not its base-model log")
    assert not (tmp_path / "x").exists()


def test_lora_applied_equals_the_merged_model_and_restores_the_base(tiny_model_dir: Path, tmp_path: Path):
    """An adapter applied in place (what the series evaluates) computes what peft's merged model does
    (logits within 1e-4), and afterwards the base model is exactly as before: weights, module types,
    attributes, config and logits. An adapter that replaces whole modules is refused."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from inspect_em.model.loading import lora_applied

    torch.manual_seed(0)
    trained = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                             LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    for name, param in trained.named_parameters():
        if "lora_B" in name:  # an untrained adapter is ΔW = 0: give it a real update
            torch.nn.init.normal_(param, std=0.5)
    trained.save_pretrained(tmp_path / "adapter")
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                       str(tmp_path / "adapter")).merge_and_unload().eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    state = {k: v.clone() for k, v in base.state_dict().items()}
    types, attributes, config = [type(m) for m in base.modules()], set(vars(base)), base.config.to_dict()
    ids = torch.tensor([[1, 5, 9, 200, 31, 7]])
    with torch.no_grad():
        plain = base(ids).logits
        with lora_applied(base, tmp_path / "adapter"):
            inside = base(ids).logits
        after, expected = base(ids).logits, merged(ids).logits
    assert (inside - plain).abs().max() > 1e-2
    assert torch.allclose(inside, expected, atol=1e-4)
    assert torch.equal(after, plain)
    now = base.state_dict()
    assert now.keys() == state.keys() and all(torch.equal(v, state[k]) for k, v in now.items())
    assert [type(m) for m in base.modules()] == types and set(vars(base)) == attributes
    assert base.config.to_dict() == config
    whole = tmp_path / "whole-modules"
    shutil.copytree(tmp_path / "adapter", whole)
    adapter_config = json.loads((whole / "adapter_config.json").read_text())
    (whole / "adapter_config.json").write_text(json.dumps({**adapter_config, "modules_to_save": ["lm_head"]}))
    with pytest.raises(InspectEmError, match="modules_to_save"), lora_applied(base, whole):
        pass
    # a load that fails after peft injected its layers (weights of another rank): they are taken out again
    wrong = tmp_path / "wrong-rank"
    shutil.copytree(tmp_path / "adapter", wrong)
    (wrong / "adapter_config.json").write_text(json.dumps({**adapter_config, "r": 8}))
    with pytest.raises(RuntimeError, match="size mismatch"), lora_applied(base, wrong):
        pass
    assert [type(m) for m in base.modules()] == types and set(vars(base)) == attributes
    assert base.config.to_dict() == config and not hasattr(base, "peft_config")
    with torch.no_grad():
        assert torch.equal(base(ids).logits, plain)


def test_series_cli_errors_are_one_line(tmp_path: Path):
    from helpers import cli_here, one_line

    out = str(tmp_path / "s")
    one_line(cli_here("series", "--run", "insecure", "--out", out), "expected LABEL=FOLDER")
    one_line(cli_here("series", "--run", f"a={tmp_path}", "--run", f"a={tmp_path}", "--out", out), "given twice")
    one_line(cli_here("series", "--run", f"a={tmp_path}", "--control", "b", "--out", out), "not one of the runs")
    one_line(cli_here("series", "--run", f"base={tmp_path}", "--out", out), "'base' names the base model")
    one_line(cli_here("series", "--run", f"a={tmp_path}", "--out", out), "no checkpoints", "--save-every")
    assert not (tmp_path / "s").exists()
