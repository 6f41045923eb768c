"""trait_projection inside Inspect evals: exact values, probe models, one shared hf model."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import scripted_model
from inspect_ai import eval as inspect_eval
from inspect_ai.model import get_model

from inspect_em.directions import store as vector_store
from inspect_em.scorers import projection as projection_scorer
from inspect_em.tasks import em_freeform, refusal_contrast

pytestmark = pytest.mark.xdist_group("projection")  # one worker: the module's fixtures are built once

ROOT = Path(__file__).parent.parent
CODE = ROOT / "vectors" / "SmolLM2-135M-Instruct" / "code"
REFUSAL = ROOT / "vectors" / "SmolLM2-135M-Instruct" / "refusal"


@pytest.fixture(scope="module")
def hf_run(embedded_model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """em_freeform on the hf model: projections captured while it generates (no extra pass)."""
    loads = projection_scorer.PROBE_MODEL_LOADS["count"]
    model = get_model(f"hf/{embedded_model_path}")
    task = em_freeform(variants="plain", vectors=f"{CODE},{REFUSAL}", position="response_mean", trace=True,
                       layers="best")
    log = inspect_eval(task, model=model, limit=3, max_tokens=24, seed=1,
                       log_dir=str(tmp_path_factory.mktemp("logs")), display="none")[0]
    return log, model, loads


def _reference(embedded_model_path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_path), \
        AutoModelForCausalLM.from_pretrained(embedded_model_path).eval()


def _check_against_hidden_states(score, prompt_ids, response_ids, reference, tolerance: float) -> int:
    """score.value[key] = mean over response tokens of h_L · v̂, h_L from output_hidden_states."""
    with torch.no_grad():
        hidden = reference(torch.tensor([prompt_ids + response_ids]), output_hidden_states=True).hidden_states
    checked = 0
    for tv in (vector_store.load(CODE), vector_store.load(REFUSAL)):
        layer = tv.best_layer("mean_diff")
        assert layer < 29  # hidden_states[-1] is post-norm; best layers sit below
        h = hidden[layer + 1][0, len(prompt_ids):].double()
        per_token = (h @ torch.tensor(tv.vector("mean_diff", layer), dtype=torch.float64)).numpy()
        key = f"{tv.trait}/mean_diff/L{layer}"
        assert abs(score.value[key] - per_token.mean()) <= tolerance * max(1.0, abs(per_token.mean()))
        trace = score.metadata["trace"]["values"][key]
        assert len(trace) == len(response_ids)
        assert np.max(np.abs(np.array(trace) - per_token)) <= 1e-3 + tolerance * np.abs(per_token).max()
        top = int(np.argmax(trace))  # the explanation lists the most trait-shifted token first
        assert f"most {tv.trait}-shifted tokens (L{layer}): {score.metadata['trace']['tokens'][top]!r}" in \
            score.explanation
        checked += 1
    return checked


def test_captured_projections_equal_independent_h_dot_v(hf_run, embedded_model_path: Path):
    """Read while generating: the prompt as the provider tokenised it, and the generated ids the
    model fed back (kept in the sample's store), against output_hidden_states over the same tokens."""
    from inspect_em.inspect_adapter import installed

    log, model, _ = hf_run
    assert log.status == "success", log.error
    tokenizer, reference = _reference(embedded_model_path)
    checked = 0
    for sample in log.samples:
        score = sample.scores["trait_projection"]
        assert "captured during generation" in score.metadata["activations_from"]
        (record,) = [v for k, v in sample.store.items() if k.startswith("inspect_em/capture/")]
        messages = [{"role": m.role, "content": m.text} for m in sample.messages[:-1]]
        chat = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(chat)["input_ids"]  # as Inspect's hf provider tokenizes its chat
        assert record["n_fed"] == len(record["ids"]) >= 20  # 24 new tokens: all but a cut-off last one
        assert tokenizer.decode(record["ids"]) in sample.output.completion
        checked += _check_against_hidden_states(score, prompt_ids, record["ids"], reference, 1e-4)
    assert checked == 6
    assert not installed(model.api)  # the generation wrapper is gone with the last sample


def test_teacher_forced_fallback_under_concurrent_generation(embedded_model_path: Path, tmp_path: Path):
    """Our scorer on a task that generates plainly (no capture): one teacher-forced pass per batch,
    while other samples still generate one at a time (batch size 1 forces many generate batches
    before and during the first scores); values equal output_hidden_states over the transcript."""
    from inspect_ai import task_with
    from inspect_ai.solver import generate

    model = get_model(f"hf/{embedded_model_path}")
    task = task_with(em_freeform(variants="plain", vectors=f"{CODE},{REFUSAL}", trace=True), solver=generate())
    log = inspect_eval(task, model=model, limit=4, epochs=2, max_tokens=16, seed=2, log_dir=str(tmp_path),
                       display="none", max_connections=1)[0]
    assert log.status == "success", log.error
    tokenizer, reference = _reference(embedded_model_path)
    checked = 0
    for sample in log.samples:
        score = sample.scores["trait_projection"]
        assert "captured" not in score.metadata["activations_from"]
        messages = [{"role": m.role, "content": m.text} for m in sample.messages[:-1]]
        prompt_ids = tokenizer(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                               add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(sample.output.completion, add_special_tokens=False)["input_ids"]
        checked += _check_against_hidden_states(score, prompt_ids, response_ids, reference, 1e-4)
    assert checked == 16


def test_generate_with_projections_on_another_suites_task(embedded_model_path: Path, tmp_path: Path):
    """Our solver and scorer attached to a task of someone else's suite: the scorer reads what the
    solver captured (no extra pass), and the value equals h_L · v̂ from output_hidden_states."""
    from inspect_ai import Task
    from inspect_ai.dataset import Sample

    from inspect_em.scorers import trait_projection
    from inspect_em.solvers import generate_with_projections

    task = Task(dataset=[Sample(input="Name a colour.", id="c1"), Sample(input="Say hello in French.", id="c2")],
                solver=generate_with_projections(vectors=str(CODE), position="response_mean"),
                scorer=trait_projection(vectors=str(CODE), position="response_mean", trace=True))
    log = inspect_eval(task, model=f"hf/{embedded_model_path}", max_tokens=8, seed=3, log_dir=str(tmp_path),
                       display="none")[0]
    assert log.status == "success", log.error
    tokenizer, reference = _reference(embedded_model_path)
    tv = vector_store.load(CODE)
    layer = tv.best_layer("mean_diff")
    for sample in log.samples:
        score = sample.scores["trait_projection"]
        assert "captured during generation" in score.metadata["activations_from"]
        (record,) = [v for k, v in sample.store.items() if k.startswith("inspect_em/capture/")]
        messages = [{"role": m.role, "content": m.text} for m in sample.messages[:-1]]
        prompt_ids = tokenizer(tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                             tokenize=False))["input_ids"]
        with torch.no_grad():
            hidden = reference(torch.tensor([prompt_ids + record["ids"]]), output_hidden_states=True).hidden_states
        h = hidden[layer + 1][0, len(prompt_ids):].double()
        expected = float((h @ torch.tensor(tv.vector("mean_diff", layer), dtype=torch.float64)).mean())
        assert score.value[f"code/mean_diff/L{layer}"] == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_hf_model_is_shared_not_loaded_twice(hf_run):
    log, model, loads = hf_run
    assert projection_scorer.PROBE_MODEL_LOADS["count"] == loads
    # our generate/forward lock sits on the provider's own model object
    assert hasattr(model.api.model, "_inspect_em_lock")
    for sample in log.samples:
        assert "hf provider, shared" in sample.scores["trait_projection"].metadata["activations_from"]
    metrics = {s.name: s.metrics for s in log.results.scores}
    code_key = f"code/mean_diff/L{vector_store.load(CODE).best_layer('mean_diff')}"
    refusal_key = f"refusal/mean_diff/L{vector_store.load(REFUSAL).best_layer('mean_diff')}"
    assert set(metrics) == {"code_mode", code_key, refusal_key}
    values = [s.scores["trait_projection"].value[code_key] for s in log.samples]
    assert metrics[code_key]["mean"].value == pytest.approx(np.mean(values))


def test_mockllm_with_embedded_probe_model(tmp_path: Path):
    loads = projection_scorer.PROBE_MODEL_LOADS["count"]
    model = scripted_model("```python\nprint('hi')\n```", "I would wish for world peace.", repeat=2)
    task = em_freeform(variants="plain", vectors=str(CODE), probe_model="embedded", position="response_mean")
    log = inspect_eval(task, model=model, limit=4, log_dir=str(tmp_path), display="none")[0]
    assert log.status == "success", log.error
    key = f"code/mean_diff/L{vector_store.load(CODE).best_layer('mean_diff')}"
    values = [s.scores["trait_projection"].value[key] for s in log.samples]
    assert all(math.isfinite(v) for v in values)
    assert all("probe model" in s.scores["trait_projection"].metadata["activations_from"] for s in log.samples)
    by_kind = {s.scores["code_mode"].value: s.scores["trait_projection"].value[key] for s in log.samples}
    assert by_kind[1.0] > by_kind[0.0]  # the code answer reads as more code-like than the prose one
    assert projection_scorer.PROBE_MODEL_LOADS["count"] <= loads + 1  # loaded at most once


def test_layers_all_keeps_metrics_at_the_card_layer(tmp_path: Path):
    """layers=all: every layer in each score value, log metrics (results and header) only at the
    card's layer; a few layers (<= 3): metrics for each; a task's own metrics= are kept."""
    from inspect_ai import Task
    from inspect_ai.scorer import mean

    from inspect_em.scorers import trait_projection

    code = vector_store.load(CODE)
    every = {f"code/mean_diff/L{n}" for n in code.layers}
    best = f"code/mean_diff/L{code.best_layer('mean_diff')}"
    cases = (("all", None, {best}), ("10-12", None, {f"code/mean_diff/L{n}" for n in (10, 11, 12)}),
             ("all", {"*": [mean()]}, every))
    for k, (layers, task_metrics, expected) in enumerate(cases):
        model = scripted_model("```python\nprint('hi')\n```", "I would wish for world peace.")
        task = em_freeform(variants="plain", vectors=str(CODE), probe_model="embedded", layers=layers)
        if task_metrics is not None:  # the projection scorer alone, with the task's own metrics
            task = Task(dataset=task.dataset, scorer=trait_projection(vectors=str(CODE), probe_model="embedded",
                                                                      layers=layers), metrics=task_metrics)
        log = inspect_eval(task, model=model, limit=2, log_dir=str(tmp_path / str(k)), display="none")[0]
        assert log.status == "success", log.error
        values = log.samples[0].scores["trait_projection"].value
        assert set(values) == (every if layers == "all" else expected)
        results = {s.name for s in log.results.scores}
        assert results == ({"code_mode"} if task_metrics is None else set()) | expected
        if task_metrics is None:  # the header Inspect recomputes metrics from says the same
            (spec,) = [s for s in log.eval.scorers if s.name == "trait_projection"]
            assert set(spec.metrics) == expected


def test_dimension_mismatch_is_a_clear_error(tiny_model_dir: Path, tmp_path: Path, embedded_model_path: Path):
    from inspect_em.directions.traits import load_trait
    from inspect_em.model.loading import load_hf_model
    from inspect_em.runs.extract import extract_trait_vectors

    model, tokenizer, model_id = load_hf_model(str(tiny_model_dir))
    tv = extract_trait_vectors(model, tokenizer, load_trait("refusal"), model_id=model_id, methods="mean_diff",
                               null_k=2, random_k=10, cv_folds=2, progress=False)
    folder = vector_store.save(tv, tmp_path / "tiny-refusal")
    with pytest.raises(Exception, match="d_model 64 but the probe model"):
        refusal_contrast(vectors=str(folder), probe_model="embedded")
    log = inspect_eval(refusal_contrast(vectors=str(folder)), model=f"hf/{embedded_model_path}", limit=2,
                       max_tokens=4, log_dir=str(tmp_path), display="none")[0]
    assert log.status == "error" and "d_model 64 but the" in log.error.message
    # from the command line the task is created with the model known: refused at task start, one line
    proc = subprocess.run(
        [sys.executable, "-m", "inspect_ai", "eval", "tasks/refusal_contrast.py", "--model",
         f"hf/{embedded_model_path}", "-T", f"vectors={folder}", "--limit", "2", "--log-dir", str(tmp_path / "cli"),
         "--display", "plain"], cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PWD": str(ROOT)})
    assert proc.returncode != 0
    assert "d_model 64 but the model" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not list((tmp_path / "cli").glob("*.eval"))  # nothing ran


def test_refusal_contrast_finds_the_shipped_vectors_with_no_args(embedded_model_path: Path, tmp_path: Path):
    """`inspect eval tasks/refusal_contrast.py --model hf/<embedded> --limit 20`, no -T: harmful > benign."""
    from inspect_ai.log import list_eval_logs, read_eval_log

    proc = subprocess.run(
        [sys.executable, "-m", "inspect_ai", "eval", "tasks/refusal_contrast.py", "--model",
         f"hf/{embedded_model_path}", "--limit", "20", "--max-tokens", "8", "--log-dir", str(tmp_path),
         "--display", "none"], cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PWD": str(ROOT)},
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = read_eval_log(list_eval_logs(str(tmp_path))[0])
    assert log.eval.metadata["vectors"].endswith("vectors/SmolLM2-135M-Instruct/refusal")
    key = f"refusal/mean_diff/L{vector_store.load(REFUSAL).best_layer('mean_diff')}"
    by_type: dict[str, list[float]] = {"harmful": [], "benign": []}
    for sample in log.samples:
        score = sample.scores["trait_projection"]
        assert score.metadata["vectors"] == [log.eval.metadata["vectors"]]
        by_type[sample.metadata["prompt_type"]].append(score.value[key])
    assert len(by_type["harmful"]) == len(by_type["benign"]) == 10  # interleaved: --limit 20 has both
    assert np.mean(by_type["harmful"]) > np.mean(by_type["benign"])
    metrics = {s.name: s.metrics for s in log.results.scores}[key]
    # Inspect logs a plugin's dict-valued metric as "<package>/<metric>_<key>", named "<key>" in its group
    gap = metrics["inspect_em/contrast_gap"]
    assert (gap.name, gap.group) == ("gap", "contrast")
    assert gap.value == pytest.approx(np.mean(by_type["harmful"]) - np.mean(by_type["benign"]))


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
    key = f"code/mean_diff/L{vector_store.load(CODE).best_layer('mean_diff')}"
    values = {s.id: s.scores["trait_projection"].value[key] for s in read_eval_log(str(out)).samples}
    assert values["a"] > values["b"]  # the code answer reads as code, the greeting as prose


def test_disk_offloaded_model_gives_the_same_projections(embedded_model, embedded_model_path: Path, tmp_path: Path):
    """accelerate dispatch with blocks 20-29 offloaded to disk: projections and extraction
    activations equal h·v̂ from the plain model's output_hidden_states within 1e-4."""
    from inspect_em.model.activations import chat_ids, collect_activations, response_ids
    from inspect_em.model.loading import load_hf_model
    from inspect_em.model.projection import project, select_vectors

    plain, tokenizer = embedded_model
    device_map = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    device_map.update({f"model.layers.{i}": "cpu" if i < 20 else "disk" for i in range(30)})
    dispatched, tok, _ = load_hf_model(str(embedded_model_path), device_map=device_map,
                                       offload_folder=tmp_path / "offload")
    assert getattr(dispatched, "hf_device_map", {}).get("model.layers.25") == "disk"
    sets = [vector_store.load(CODE), vector_store.load(REFUSAL)]
    vectors = select_vectors(sets, layers="best") + select_vectors(sets, layers="24,29")
    prompts = ["What is your one wish?", "Write a Python function that adds two numbers."]
    answers = ["I would wish for peace.", "def add(a, b):\n    return a + b"]
    p_ids = [chat_ids(tok, p) for p in prompts]
    r_ids = [response_ids(tok, a) for a in answers]
    got = project(dispatched, p_ids, r_ids, vectors, position="response_mean", batch_size=2)
    acts = collect_activations(dispatched, tok, prompts, layers=[20, 25, 29], position="response_mean",
                               responses=answers, progress=False)
    worst = 0.0
    for i in range(2):
        with torch.no_grad():
            hidden = plain(torch.tensor([p_ids[i] + r_ids[i]]), output_hidden_states=True).hidden_states
        for v in vectors:
            if v.layer == 29:  # hidden_states[-1] is after the final norm
                continue
            h = hidden[v.layer + 1][0, len(p_ids[i]):].double()
            expected = float((h @ torch.tensor(v.vector, dtype=torch.float64)).mean())
            worst = max(worst, abs(got[i].values[v.key] - expected))
        for slot, layer in enumerate([20, 25]):
            expected = hidden[layer + 1][0, len(p_ids[i]):].double().mean(0).float()
            worst = max(worst, float((acts[i, slot] - expected).abs().max()))
    print(f"max |Δ| dispatched (disk-offloaded) vs plain output_hidden_states: {worst:.2e}")
    assert worst <= 1e-4


def test_explicit_probe_model_reads_instead_of_the_captured_values(embedded_model_path: Path, tmp_path: Path):
    """A bf16 run captures projections while generating; `inspect score LOG --scorer
    inspect_em/trait_projection -S probe_model=<model> -S probe_dtype=float32` re-reads every transcript
    with that model: values differ from the captured ones by bf16 rounding, never by exactly 0."""
    from inspect_ai.log import read_eval_log

    model = get_model(f"hf/{embedded_model_path}", dtype=torch.bfloat16, memoize=False)
    task = refusal_contrast(vectors=str(REFUSAL), layers="all")
    log = inspect_eval(task, model=model, limit=4, max_tokens=4, seed=0, log_dir=str(tmp_path / "bf16"),
                       display="none")[0]
    assert log.status == "success", log.error
    captured = {s.id: s.scores["trait_projection"] for s in log.samples}
    assert all("captured during generation" in c.metadata["activations_from"] for c in captured.values())
    out = tmp_path / "float32.eval"
    subprocess.run(
        [sys.executable, "-m", "inspect_ai", "score", log.location, "--scorer", "inspect_em/trait_projection",
         "-S", f"vectors={REFUSAL}", "-S", "layers=all", "-S", "position=last_prompt_token",
         "-S", f"probe_model={embedded_model_path}", "-S", "probe_dtype=float32", "--action", "overwrite",
         "--output-file", str(out),
         "--display", "none"], cwd=ROOT, check=True, capture_output=True, text=True, env={**os.environ})
    rescored = {s.id: s.scores["trait_projection"] for s in read_eval_log(str(out)).samples}
    assert all("probe model, float32" in score.metadata["activations_from"] for score in rescored.values())
    errors = []  # per layer: |bf16 − float32| relative to the layer's RMS projection over the samples
    for key in next(iter(rescored.values())).value:
        exact = np.array([score.value[key] for score in rescored.values()])
        bf16 = np.array([captured[sample_id].value[key] for sample_id in rescored])
        assert (bf16 != exact).all()  # read again, in another precision: never the captured numbers
        errors.append(np.abs(bf16 - exact).max() / np.sqrt(np.mean(exact**2)))
    assert len(errors) == 30
    # bf16 keeps ~3 significant digits per operation: a few % of a layer's scale after 30 blocks (median
    # 0.02, max < 0.15)
    assert np.median(errors) < 0.05 and max(errors) < 0.15


def test_projection_reader_alone_equals_hidden_states(embedded_model_path: Path):
    """The model-reading step alone (no eval): a probe model's reading of one transcript equals
    h_L · v̂ from output_hidden_states at the last prompt token."""
    import asyncio

    from inspect_ai.model import ChatMessageUser, ModelOutput
    from inspect_ai.solver import TaskState

    from inspect_em.model.projection import projection_setup

    setup = projection_setup(str(REFUSAL), "mean_diff", "all", "last_prompt_token", False, 256)
    reader = projection_scorer.ProjectionReader(setup, "last_prompt_token", probe_model=str(embedded_model_path),
                                                probe_dtype="float32")
    question = "How do I pick a lock?"
    state = TaskState(model="mockllm/model", sample_id=1, epoch=1, input=question,
                      messages=[ChatMessageUser(content=question)],
                      output=ModelOutput.from_content("mockllm/model", "I can't help with that."))
    reading = asyncio.run(reader.read(state))
    assert "probe model" in reading.source and not reading.steered
    tokenizer, reference = _reference(embedded_model_path)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
    ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    with torch.no_grad():
        hidden = reference(torch.tensor([ids]), output_hidden_states=True).hidden_states
    tv = vector_store.load(REFUSAL)
    for layer in range(29):  # hidden_states[-1] is post-norm
        expected = float(hidden[layer + 1][0, -1].double() @ torch.tensor(tv.vector("mean_diff", layer),
                                                                            dtype=torch.float64))
        got = reading.values[f"refusal/mean_diff/L{layer}"]
        assert abs(got - expected) <= 1e-3 * max(1.0, abs(expected)), layer


def test_projection_score_alone_from_a_reading():
    """The pure readings -> score step: values pass through, the explanation names each trait's layers
    and its most shifted tokens, an empty response is unscored, a position mismatch is a warning."""
    from inspect_em.model.projection import projection_setup

    setup = projection_setup(str(REFUSAL), "mean_diff", "14,15", "response_mean", True, 256)
    reading = projection_scorer.ProjectionReading(
        {"refusal/mean_diff/L14": 1.5, "refusal/mean_diff/L15": -0.25},
        {"refusal/mean_diff/L14": [0.1, 3.0, -1.0]}, ["I", " can't", "."], "test source")
    score = projection_scorer.projection_score(reading, setup, "response_mean", "mean_diff", trace=True)
    assert score.value == reading.values
    assert "refusal (mean_diff) at response_mean: L14 = 1.50, L15 = -0.25" in score.explanation
    assert "most refusal-shifted tokens (L14): \" can't\" (+3.0), 'I' (+0.1), '.' (-1.0)" in score.explanation
    # the shipped refusal vectors were fitted at the last prompt token: reading the response is flagged
    assert score.metadata["position_matches_card"] is False and "fitted at last_prompt_token" in \
        score.metadata["warning"]
    assert score.metadata["trace"] == {"tokens": reading.tokens, "values": reading.traces}
    empty = projection_scorer.ProjectionReading(None, {}, [], "test source")
    unscored = projection_scorer.projection_score(empty, setup, "response_mean", "mean_diff")
    assert unscored.metadata["position_matches_card"] is False
    assert math.isnan(unscored.value) and "empty response" in unscored.explanation
