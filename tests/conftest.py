"""Shared fixtures: the embedded model (prepared once) and the optional reference folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REFERENCE_ENV = "INSPECT_EM_REFERENCE"
# Inspect's hf/ provider idles ~3 s per generation round (a 2 s gathering wait, then 1 s polls): with
# hundreds of small evals that was minutes of the suite. Here, and in the processes tests start, it
# gathers for 50 ms and awaits answers (inspect_adapter.shorten_hf_batch_wait); test_demo's `make
# demo-run` test removes this, so the provider's own path runs too.
os.environ["INSPECT_EM_HF_BATCH_WAIT"] = os.environ.get("INSPECT_EM_HF_BATCH_WAIT") or "0.05"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one thread each (and in the processes tests start),
    # so the workers do not fight over the cores
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[_name] = "1"
    import torch as _torch

    _torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def short_hf_batch_wait() -> None:
    """Installed before any test's eval, so no plain Task's eval starts the provider's own batch thread
    first (after which the wait could no longer be shortened in this worker)."""
    from inspect_em.inspect_adapter import shorten_hf_batch_wait

    assert shorten_hf_batch_wait()


@pytest.fixture(scope="session")
def embedded_model_path() -> Path:
    """The prepared SmolLM2-135M-Instruct folder (prepared on first use; no network)."""
    from inspect_em.model import embedded

    return embedded.prepare()


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``$INSPECT_EM_REFERENCE`` (e.g. ../shared/em-reference); the test skips without it."""
    value = os.environ.get(REFERENCE_ENV, "")
    if not value:
        pytest.skip(f"{REFERENCE_ENV} is not set (reference material absent)")
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"{REFERENCE_ENV}={value} is not a folder")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, embedded_model_path: Path) -> Path:
    """A 4-layer random-weight Llama (d_model 64) with the embedded model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_vectors(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Refusal and code vectors of the tiny random-weight model (mean_diff at the last prompt token)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from inspect_em.directions import store as vector_store
    from inspect_em.directions.traits import load_trait
    from inspect_em.runs.extract import extract_trait_vectors

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    folder = tmp_path_factory.mktemp("tiny-vectors")
    return [vector_store.save(extract_trait_vectors(model, tokenizer, load_trait(name), model_id="tiny",
                                                    methods="mean_diff", position="last_prompt_token", null_k=0,
                                                    random_k=0, cv_folds=2, progress=False), folder / name)
            for name in ("refusal", "code")]


@pytest.fixture(scope="session")
def embedded_model(embedded_model_path: Path):
    """(model, tokenizer) of the embedded model in float32 on CPU, loaded once."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(embedded_model_path)
    model.eval()
    with torch.no_grad():  # transformers installs its own output-capture hooks on first use
        model(torch.tensor([[1, 2, 3]]), output_hidden_states=True)
    return model, AutoTokenizer.from_pretrained(embedded_model_path)


@pytest.fixture(autouse=True)
def offline_token_estimates(monkeypatch: pytest.MonkeyPatch) -> None:
    """mockllm estimates token counts with tiktoken, which downloads its vocabulary: no network
    here, so tests count whitespace-separated words instead (only mockllm usage figures change)."""
    import tiktoken

    class Words:
        def encode(self, text: str, **_: object) -> list[str]:
            return text.split()

    monkeypatch.setattr(tiktoken, "get_encoding", lambda _name: Words())


# --- the time budget: every test under TEST_BUDGET_S, except the one end-to-end test -------------------
TEST_BUDGET_S = 60.0
E2E_BUDGET_S = 90.0
_DURATIONS: dict[str, float] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"e2e: the one end-to-end test on the embedded model (budget {E2E_BUDGET_S:.0f} s; every "
                   f"other test must finish within {TEST_BUDGET_S:.0f} s)")


_SPENT: dict[str, float] = {}  # per test, in the process that runs it (a worker under xdist)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A test's time is its setup and call together (a module fixture is charged to the first test
    that uses it; teardown comes after the verdict); over its budget, the test fails with a message
    naming the budget."""
    outcome = yield
    report = outcome.get_result()
    _SPENT[item.nodeid] = _SPENT.get(item.nodeid, 0.0) + report.duration
    if report.when != "call" or report.outcome != "passed":
        return
    budget = E2E_BUDGET_S if item.get_closest_marker("e2e") else TEST_BUDGET_S
    spent = _SPENT[item.nodeid]
    if spent > budget and not os.environ.get("INSPECT_EM_NO_TEST_BUDGET"):
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} took {spent:.1f} s, over the {budget:g} s budget of "
                           f"{'the end-to-end test' if item.get_closest_marker('e2e') else 'a test'} "
                           "(tests/conftest.py: make it cheaper, e.g. a tiny random-weight model)")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Every phase's time, gathered where the summary is printed (the controller under xdist)."""
    _DURATIONS[report.nodeid] = _DURATIONS.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """The 10 slowest tests of every run (setup + call + teardown)."""
    slowest = sorted(_DURATIONS.items(), key=lambda kv: kv[1], reverse=True)[:10]
    if slowest:
        terminalreporter.write_sep("-", f"10 slowest tests (budget {TEST_BUDGET_S:.0f} s each, "
                                        f"{E2E_BUDGET_S:.0f} s for the e2e test)")
        for nodeid, seconds in slowest:
            terminalreporter.write_line(f"{seconds:7.1f} s  {nodeid}")
