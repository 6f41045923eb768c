"""trait_projection inside Inspect evals: exact values, probe models, one shared hf model."""

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import scripted_model
from inspect_ai import eval as inspect_eval
from inspect_ai.model import get_model

from inspect_em import vectors as vector_store
from inspect_em.scorers import projection as projection_scorer
from inspect_em.tasks import em_freeform, refusal_contrast

ROOT = Path(__file__).parent.parent
CODE = ROOT / "vectors" / "SmolLM2-135M-Instruct" / "code"
REFUSAL = ROOT / "vectors" / "SmolLM2-135M-Instruct" / "refusal"


@pytest.fixture(scope="module")
def hf_run(embedded_model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    loads = projection_scorer.PROBE_MODEL_LOADS["count"]
    model = get_model(f"hf/{embedded_model_path}")
    task = em_freeform(variants="plain", vectors=f"{CODE},{REFUSAL}", over="per_token", layers="best")
    log = inspect_eval(task, model=model, limit=3, max_tokens=24, seed=1,
                       log_dir=str(tmp_path_factory.mktemp("logs")), display="none")[0]
    return log, model, loads


def test_projection_equals_independent_h_dot_v(hf_run, embedded_model_path: Path):
    """Score = mean over response tokens of h_L · v̂, with h_L from output_hidden_states."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log, _, _ = hf_run
    assert log.status == "success", log.error
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path)
    reference = AutoModelForCausalLM.from_pretrained(embedded_model_path).eval()
    code, refusal = vector_store.load(CODE), vector_store.load(REFUSAL)
    checked = 0
    for sample in log.samples:
        score = sample.scores["trait_projection"]
        messages = [{"role": m.role, "content": m.text} for m in sample.messages[:-1]]
        chat = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(chat)["input_ids"]  # as Inspect's hf provider tokenizes its chat
        response_ids = tokenizer(sample.output.completion, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            hidden = reference(torch.tensor([prompt_ids + response_ids]), output_hidden_states=True).hidden_states
        for tv in (code, refusal):
            layer = tv.best_layer("mean_diff")
            assert layer < 29  # hidden_states[-1] is post-norm; best layers sit below
            h = hidden[layer + 1][0, len(prompt_ids):].double()
            per_token = (h @ torch.tensor(tv.vector("mean_diff", layer), dtype=torch.float64)).numpy()
            key = f"{tv.trait}/mean_diff/L{layer}"
            assert abs(score.value[key] - per_token.mean()) <= 1e-4
            trace = score.metadata["per_token"][key]
            assert len(trace) == len(response_ids)
            assert np.max(np.abs(np.array(trace) - per_token)) <= 1e-3  # traces are rounded to 3 places
            checked += 1
    assert checked == 6


def test_hf_model_is_shared_not_loaded_twice(hf_run):
    log, model, loads = hf_run
    assert projection_scorer.PROBE_MODEL_LOADS["count"] == loads
    # our generate/forward lock sits on the provider's own model object
    assert hasattr(model.api.model, "_inspect_em_lock")
    for sample in log.samples:
        assert "hf provider, shared" in sample.scores["trait_projection"].metadata["activations_from"]
    metrics = {s.name: s.metrics for s in log.results.scores}
    assert set(metrics) == {"code_mode", "code/mean_diff/L22", "refusal/mean_diff/L28"}
    values = [s.scores["trait_projection"].value["code/mean_diff/L22"] for s in log.samples]
    assert metrics["code/mean_diff/L22"]["mean"].value == pytest.approx(np.mean(values))


def test_mockllm_with_embedded_probe_model(tmp_path: Path):
    loads = projection_scorer.PROBE_MODEL_LOADS["count"]
    model = scripted_model("```python\nprint('hi')\n```", "I would wish for world peace.", repeat=2)
    task = em_freeform(variants="plain", vectors=str(CODE), probe_model="embedded", over="response_mean")
    log = inspect_eval(task, model=model, limit=4, log_dir=str(tmp_path), display="none")[0]
    assert log.status == "success", log.error
    values = [s.scores["trait_projection"].value["code/mean_diff/L22"] for s in log.samples]
    assert all(math.isfinite(v) for v in values)
    assert all("probe model" in s.scores["trait_projection"].metadata["activations_from"] for s in log.samples)
    by_kind = {s.scores["code_mode"].value: s.scores["trait_projection"].value["code/mean_diff/L22"]
               for s in log.samples}
    assert by_kind[1.0] > by_kind[0.0]  # the code answer reads as more code-like than the prose one
    assert projection_scorer.PROBE_MODEL_LOADS["count"] <= loads + 1  # loaded at most once


def test_dimension_mismatch_is_a_clear_error(tiny_model_dir: Path, tmp_path: Path, embedded_model_path: Path):
    from inspect_em.modeling import load_hf_model
    from inspect_em.pipeline import extract_trait_vectors
    from inspect_em.traits import load_trait

    model, tokenizer, model_id = load_hf_model(str(tiny_model_dir))
    tv = extract_trait_vectors(model, tokenizer, load_trait("refusal"), model_id=model_id, methods="mean_diff",
                               progress=False)
    folder = vector_store.save(tv, tmp_path / "tiny-refusal")
    with pytest.raises(Exception, match="d_model 64 but the probe model"):
        refusal_contrast(vectors=str(folder), probe_model="embedded")
    log = inspect_eval(refusal_contrast(vectors=str(folder)), model=f"hf/{embedded_model_path}", limit=2,
                       max_tokens=4, log_dir=str(tmp_path), display="none")[0]
    assert log.status == "error" and "d_model 64 but the" in log.error.message


def test_inspect_score_by_path_with_probe_model(tmp_path: Path):
    """`inspect score LOG --scorer scorers/projection.py -S vectors=<relative path>` on a foreign log."""
    import subprocess
    import sys

    from inspect_ai import Task
    from inspect_ai.dataset import Sample
    from inspect_ai.log import read_eval_log

    foreign = Task(dataset=[Sample(input="hello", id="a"), Sample(input="write code", id="b")])
    model = scripted_model("```python\nimport os\nprint(os.listdir('.'))\n```", "Hello! Nice to meet you.")
    log = inspect_eval(foreign, model=model, log_dir=str(tmp_path), display="none")[0]
    out = tmp_path / "scored.eval"
    subprocess.run(
        [sys.executable, "-m", "inspect_ai", "score", log.location, "--scorer", "scorers/projection.py",
         "-S", "vectors=vectors/SmolLM2-135M-Instruct/code", "-S", "probe_model=embedded",
         "--output-file", str(out), "--display", "none"],
        cwd=ROOT, check=True, capture_output=True, text=True, env={**os.environ, "PWD": str(ROOT)},
    )
    values = {s.id: s.scores["trait_projection"].value["code/mean_diff/L22"] for s in read_eval_log(str(out)).samples}
    assert values["a"] > values["b"]  # the code answer reads as code, the greeting as prose
