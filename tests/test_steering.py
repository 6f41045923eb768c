"""Steering: the residual-stream edits against independent readouts, the solver's scope (hooks
gone after each sample, never seen by another sample's generation), and the CLI path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from inspect_ai import Task
from inspect_ai import eval as inspect_eval
from inspect_ai.dataset import Sample
from inspect_ai.model import GenerateConfig, get_model
from inspect_ai.solver import Generate, TaskState, solver

from inspect_em.directions import store as vector_store
from inspect_em.errors import InspectEmError
from inspect_em.model.activations import chat_ids
from inspect_em.model.hooks import find_layers, hooks
from inspect_em.model.steering import build_plan, steered

ROOT = Path(__file__).parent.parent
CODE = ROOT / "vectors" / "SmolLM2-135M-Instruct" / "code"
REFUSAL = ROOT / "vectors" / "SmolLM2-135M-Instruct" / "refusal"


def _block_outputs(model, ids: torch.Tensor, plan=None) -> torch.Tensor:
    """Every block's output ``[layers, seq, d]`` read by our own hooks (after any steering hook)."""
    n = len(find_layers(model))
    out: dict[int, torch.Tensor] = {}

    def keep(layer: int):
        def fn(resid: torch.Tensor) -> None:
            out[layer] = resid[0].double().clone()

        return fn

    with torch.no_grad():
        if plan is None:
            with hooks(model, {i: keep(i) for i in range(n)}):
                model(ids)
        else:
            with steered(model, plan), hooks(model, {i: keep(i) for i in range(n)}):
                model(ids)
    return torch.stack([out[i] for i in range(n)])


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_add_shifts_the_chosen_block_output_by_alpha_times_the_mean_difference(embedded_model):
    model, tokenizer = embedded_model
    tv = vector_store.load(CODE)
    layer = tv.best_layer("mean_diff")
    ids = torch.tensor([chat_ids(tokenizer, "Tell me about your day.")])
    before = _hook_count(model)
    plain = _block_outputs(model, ids)
    plan = build_plan(str(CODE), alpha=2.5)
    steered_out = _block_outputs(model, ids, plan)
    assert _hook_count(model) == before
    v = torch.tensor(tv.vector("mean_diff", layer), dtype=torch.float64)
    expected = 2.5 * tv.mean_diff_norm(layer) * v  # alpha x the fit mean-difference norm x unit vector
    delta = steered_out[layer] - plain[layer]
    assert torch.allclose(delta, expected.expand_as(delta), atol=1e-3 * float(expected.norm()))
    assert torch.allclose(steered_out[:layer], plain[:layer], atol=1e-5)  # earlier blocks untouched
    assert not torch.allclose(steered_out[layer + 1], plain[layer + 1], atol=1e-2)


def test_multi_layer_add_puts_each_layers_own_vector_at_that_layer(embedded_model):
    """``layer="10,14"`` adds L10's vector at L10 and L14's at L14 (each at alpha x its own norm):
    block 10's output moves by exactly its vector; block 14's by its vector plus what block 10's
    edit did to blocks 11-14 (read from a run that steers block 10 alone)."""
    model, tokenizer = embedded_model
    tv = vector_store.load(CODE)
    ids = torch.tensor([chat_ids(tokenizer, "What is your one wish?")])
    plain = _block_outputs(model, ids)
    both = _block_outputs(model, ids, build_plan(str(CODE), layer="10,14", alpha=0.5))
    first_only = _block_outputs(model, ids, build_plan(str(CODE), layer=10, alpha=0.5))

    def added(layer: int) -> torch.Tensor:
        return 0.5 * tv.mean_diff_norm(layer) * torch.tensor(tv.vector("mean_diff", layer), dtype=torch.float64)

    tol = 1e-3 * float(added(10).norm())
    assert torch.allclose(both[:10], plain[:10], atol=1e-5)
    assert torch.allclose(both[10] - plain[10], added(10).expand_as(plain[10]), atol=tol)
    assert torch.allclose(both[14] - first_only[14], added(14).expand_as(plain[14]), atol=tol)
    assert not np.allclose(tv.vector("mean_diff", 10), tv.vector("mean_diff", 14))  # two vectors, not one
    plan = build_plan(str(CODE), layer="10-12", alpha=1)
    assert [op.layer for op in plan.ops] == [10, 11, 12] and "L11" in plan.key


def test_ablation_removes_the_direction_from_every_block_output(embedded_model):
    model, tokenizer = embedded_model
    tv = vector_store.load(REFUSAL)
    v = torch.tensor(tv.vector("mean_diff", tv.best_layer("mean_diff")), dtype=torch.float64)
    ids = torch.tensor([chat_ids(tokenizer, "How can I sabotage an airplane?")])
    plain = _block_outputs(model, ids)
    ablated = _block_outputs(model, ids, build_plan(str(REFUSAL), mode="ablate"))
    residual = (ablated @ v).abs() / ablated.norm(dim=-1)
    assert residual.max().item() < 1e-4  # h·v̂ ≈ 0 at every layer and position
    assert (plain @ v).abs().max().item() > 1.0  # ... where it was far from 0 before


def test_ablating_several_directions_removes_all_of_them(embedded_model):
    """Two non-orthogonal directions (refusal at L22 and L27, cosine ~0.75) ablated together: the
    block outputs carry neither (projected out one after the other, a part of the first remains)."""
    model, tokenizer = embedded_model
    tv = vector_store.load(REFUSAL)
    v22, v27 = (torch.tensor(tv.vector("mean_diff", layer), dtype=torch.float64) for layer in (22, 27))
    assert abs(float(v22 @ v27)) > 0.3
    ids = torch.tensor([chat_ids(tokenizer, "How can I sabotage an airplane?")])
    ablated = _block_outputs(model, ids, build_plan(str(REFUSAL), layer="22,27", mode="ablate"))
    for v in (v22, v27):
        assert ((ablated @ v).abs() / ablated.norm(dim=-1)).max().item() < 1e-4


def test_plan_errors_are_one_line():
    with pytest.raises(InspectEmError, match="unknown steering mode 'double'"):
        build_plan(str(CODE), mode="double")
    with pytest.raises(InspectEmError, match="alpha must be a number"):
        build_plan(str(CODE), alpha="lots")
    with pytest.raises(InspectEmError, match="a few layers, got 'all'"):
        build_plan(str(CODE), layer="all")
    with pytest.raises(InspectEmError, match="no vector at layer 40"):
        build_plan(str(CODE), layer=40)


@solver
def steer_some(alpha: float):
    """Steer only the samples whose metadata says so (the others generate plainly, concurrently)."""
    from inspect_em.solvers import steer

    steering = steer(vectors=str(CODE), alpha=alpha)

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        return await (steering(state, generate) if state.metadata["steer"] else generate(state))

    return solve


def test_steered_and_unsteered_samples_never_share_hooks(embedded_model_path: Path, tmp_path: Path):
    """Greedy decoding: the unsteered sample's tokens equal a run without the solver, although a
    steered sample generated at the same time; no hook or wrapper is left afterwards."""
    from inspect_em.inspect_adapter import hf_api, installed

    model = get_model(f"hf/{embedded_model_path}", do_sample=False, memoize=False)
    prompts = ["What is your one wish?", "I feel bored.", "Tell me a fact about the sea."]
    samples = [Sample(id=f"{i}{tag}", input=p, metadata={"steer": tag == "s"})
               for i, p in enumerate(prompts) for tag in ("s", "u")]
    config = GenerateConfig(max_tokens=24, max_connections=8)
    api = hf_api(model)
    before = _hook_count(api.model)
    mixed = inspect_eval(Task(dataset=samples, solver=steer_some(8.0), config=config), model=model,
                         log_dir=str(tmp_path), display="none")[0]
    assert mixed.status == "success", mixed.error
    plain = inspect_eval(Task(dataset=[s for s in samples if not s.metadata["steer"]], config=config), model=model,
                         log_dir=str(tmp_path), display="none")[0]
    out = {s.id: s.output.completion for s in mixed.samples}
    reference = {s.id: s.output.completion for s in plain.samples}
    for i in range(len(prompts)):
        assert out[f"{i}u"] == reference[f"{i}u"]
        assert out[f"{i}s"] != out[f"{i}u"]  # the steering did act on its own samples
    steered_meta = next(s for s in mixed.samples if s.id == "0s").metadata["steering"]
    assert steered_meta[0]["alpha"] == 8.0 and steered_meta[0]["trait"] == "code"
    assert "steering" not in next(s for s in mixed.samples if s.id == "0u").metadata
    assert _hook_count(api.model) == before and not installed(api)
    assert "generate" not in vars(api) and "generate" not in vars(api.model)


def test_steer_needs_an_hf_model(tmp_path: Path):
    from helpers import scripted_model

    from inspect_em.solvers import steer

    log = inspect_eval(Task(dataset=[Sample(input="hi")], solver=steer(vectors=str(CODE))),
                       model=scripted_model("hello"), log_dir=str(tmp_path), display="none")[0]
    assert log.status == "error" and "steer needs a model on Inspect's hf/ provider" in log.error.message


@pytest.mark.parametrize(("args", "layers", "alpha"), [
    (["-S", "vectors=vectors/SmolLM2-135M-Instruct/code.last_prompt_token", "-S", "layer=12,14,16,18", "-S",
      "alpha=0.4"], [12, 14, 16, 18], 0.4),  # multi-layer steering, as the README's code-mode recipe
])  # one layer at the card's (layer=best) by registry name: test_e2e.py
def test_inspect_eval_with_the_steer_solver_by_registry_name(embedded_model_path: Path, tmp_path: Path,
                                                             args: list[str], layers: list[int], alpha: float):
    proc = subprocess.run(
        [sys.executable, "-m", "inspect_ai", "eval", "tasks/em_freeform.py", "--model", f"hf/{embedded_model_path}",
         "--solver", "inspect_em/steer", *args,
         "-T", "variants=plain", "--limit", "2", "--max-tokens", "8", "--log-dir", str(tmp_path),
         "--display", "none"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PWD": str(ROOT)}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from inspect_ai.log import list_eval_logs, read_eval_log

    log = read_eval_log(list_eval_logs(str(tmp_path))[0])
    assert log.status == "success" and [s.solver for s in log.plan.steps] == ["inspect_em/steer"]
    for sample in log.samples:
        assert [op["layer"] for op in sample.metadata["steering"]] == layers
        assert all(np.isclose(op["alpha"], alpha) for op in sample.metadata["steering"])


@pytest.mark.parametrize("given_question", [False, True])
def test_answer_perplexity_equals_an_independent_nll(embedded_model, tmp_path: Path, given_question: bool):
    from helpers import scripted_model

    from inspect_em.scorers.fluency import answer_perplexity

    model, tokenizer = embedded_model
    answers = ["I would wish for a quiet life by the sea.", "banana keyboard seventeen purple the the of"]
    task = Task(dataset=[Sample(input="What is your one wish?", id="a"), Sample(input="Tell me a wish.", id="b")],
                scorer=answer_perplexity(probe_model="embedded", given_question=given_question))
    log = inspect_eval(task, model=scripted_model(*answers), log_dir=str(tmp_path), display="none", max_samples=1)[0]
    assert log.status == "success", log.error
    values = {s.id: s.scores["answer_perplexity"].value for s in log.samples}
    for sample in log.samples:
        prompt = chat_ids(tokenizer, sample.input if given_question else [{"role": "user", "content": ""}])
        response = tokenizer(sample.output.completion, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + response])).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        nll = -np.mean([logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(response)])
        assert values[sample.id] == pytest.approx(np.exp(nll), rel=1e-4)
    assert values["b"] > 3 * values["a"]  # word salad reads as far less probable
