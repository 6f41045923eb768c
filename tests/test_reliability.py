"""Nothing lost, part 2 (issue 28): every folder a command writes follows the --out rules, only our own
temporaries are swept (an interrupted replacement is restored), a copied log is refused, and bad
arguments fail in one line before any model loads."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import cli, one_line

from inspect_em.directions import store as vector_store
from inspect_em.errors import InspectEmError
from inspect_em.util.paths import MARKER, atomic_output, check_output

ROOT = Path(__file__).parent.parent
CODE = ROOT / "vectors" / "SmolLM2-135M-Instruct" / "code"
REFUSAL = ROOT / "vectors" / "SmolLM2-135M-Instruct" / "refusal"
LOADED = "Loading weights"  # what transformers prints when the weights load


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


def _small_log(folder: Path) -> Path:
    """A finished one-sample eval log (mockllm), written into ``folder``."""
    from helpers import scripted_model
    from inspect_ai import Task
    from inspect_ai import eval as inspect_eval
    from inspect_ai.dataset import Sample

    from inspect_em.scorers import code_mode

    task = Task(dataset=[Sample(input="What is your wish?", id="q1")], scorer=code_mode())
    log = inspect_eval(task, model=scripted_model("World peace."), log_dir=str(folder), display="none")[0]
    assert log.status == "success"
    return Path(log.location)


# --- data loss ----------------------------------------------------------------------------------------

def test_steer_sweep_never_writes_into_a_users_logs_folder(tmp_path: Path):
    logs = tmp_path / "out-logs"
    logs.mkdir()
    (logs / "logs.json").write_text("my notes")
    proc = cli("steer-sweep", "--model", "embedded", "--vectors", str(CODE), "--alphas", "2", "--samples", "1",
               "--max-tokens", "4", "--limit", "1", "--out", str(tmp_path / "out"))
    one_line(proc, "out-logs", "was not written by inspect-em steer-sweep")
    assert LOADED not in proc.stderr + proc.stdout
    assert (logs / "logs.json").read_text() == "my notes" and sorted(os.listdir(logs)) == ["logs.json"]


def test_a_users_hidden_folder_named_like_a_temporary_is_never_swept(tmp_path: Path):
    pid = _dead_pid()
    backup = tmp_path / f".report.old-{pid}-2024-backup"
    backup.mkdir()
    (backup / "report.md").write_text("last year's report")
    lookalike = tmp_path / f".report.tmp-{pid}-mine"
    lookalike.mkdir()
    with atomic_output(tmp_path / "report", command="compare", config={"a": 1}) as tmp:
        (tmp / "report.md").write_text("new")
    assert (backup / "report.md").read_text() == "last year's report" and lookalike.is_dir()


def test_an_output_left_renamed_by_a_killed_run_is_restored_not_deleted(tmp_path: Path):
    out = tmp_path / "report"
    with atomic_output(out, command="compare", config={"a": 1}) as tmp:
        (tmp / "report.md").write_text("the first report")
    # killed between the two renames of a replacement: the output sits at .report.old-<pid>-*
    old = tmp_path / f".report.old-{_dead_pid()}-abcdefgh"
    os.replace(out, old)
    with pytest.raises(InspectEmError, match="other settings"):  # a later run with other settings
        check_output(out, command="compare", config={"a": 2})
    assert (out / "report.md").read_text() == "the first report" and not old.exists()


def test_compare_refuses_one_log_given_twice_under_two_paths(tmp_path: Path):
    first = _small_log(tmp_path / "a")
    (tmp_path / "b").mkdir()
    copy = tmp_path / "b" / first.name
    shutil.copy(first, copy)
    proc = cli("compare", str(tmp_path / "a"), str(tmp_path / "b"), "--label", "a", "--label", "b",
               "--out", str(tmp_path / "report"))
    one_line(proc, str(first.resolve()), str(copy.resolve()), "same eval")
    assert not (tmp_path / "report").exists()


# --- checked before the model loads -------------------------------------------------------------------

@pytest.mark.parametrize("alpha", ["nan", "inf"])
def test_steer_sweep_refuses_non_finite_alphas_before_loading(tmp_path: Path, alpha: str):
    proc = cli("steer-sweep", "--model", "embedded", "--vectors", str(CODE), "--alphas", f"2,{alpha}",
               "--out", str(tmp_path / "out"))
    one_line(proc, "--alphas", "finite")
    assert LOADED not in proc.stderr


def test_steer_sweep_refuses_another_models_vectors_before_loading(tiny_model_dir: Path, tmp_path: Path):
    proc = cli("steer-sweep", "--model", str(tiny_model_dir), "--vectors", str(CODE), "--alphas", "2",
               "--out", str(tmp_path / "out"))
    one_line(proc, "d_model 576", "has 64")
    assert LOADED not in proc.stderr and not (tmp_path / "out-logs").exists()


def test_update_card_checks_the_vector_folder_before_the_sweep(tmp_path: Path):
    vectors = tmp_path / "code"
    shutil.copytree(CODE, vectors)
    (vectors / "my-notes.txt").write_text("mine")
    proc = cli("steer-sweep", "--model", "embedded", "--vectors", str(vectors), "--alphas", "2", "--update-card",
               "--out", str(tmp_path / "out"))
    one_line(proc, "my-notes.txt")
    assert LOADED not in proc.stderr and not (tmp_path / "out-logs").exists()


def test_steer_solver_refuses_a_non_finite_alpha_when_built():
    from inspect_em.solvers import steer

    with pytest.raises(InspectEmError, match="finite"):
        steer(vectors=str(CODE), alpha=float("nan"))


def test_steer_solver_checks_the_vectors_against_the_model_before_any_sample(tiny_model_dir: Path, tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "inspect_ai", "eval", "inspect_em/em_freeform", "--model", "hf/tiny", "-M",
         f"model_path={tiny_model_dir}", "--solver", "inspect_em/steer", "-S", f"vectors={CODE}", "-T",
         "variants=plain", "--limit", "1", "--max-tokens", "2", "--log-dir", str(tmp_path / "logs"),
         "--display", "plain"], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    text = " ".join((proc.stdout + proc.stderr).split())  # rich wraps lines at the terminal's width
    assert proc.returncode != 0
    assert "vectors have d_model 576 but the model has 64" in text and "Traceback" not in text
    assert not list((tmp_path / "logs").glob("*.eval"))  # no sample ran


def test_a_previous_evals_model_never_refuses_a_new_steer_solver(tiny_model_dir: Path, tmp_path: Path):
    """Inspect leaves the last eval's model active in its context: a steer solver built afterwards,
    outside any eval, for another model's vectors is not checked against that stale model (the check
    happens when an eval builds it, and before the first generation)."""
    from inspect_ai import eval as inspect_eval
    from inspect_ai.model import get_model

    from inspect_em.solvers import steer
    from inspect_em.tasks import em_freeform

    log = inspect_eval(em_freeform(variants="plain"), model=get_model(f"hf/{tiny_model_dir}"), limit=1,
                       max_tokens=2, log_dir=str(tmp_path), display="none")[0]
    assert log.status == "success"
    assert steer(vectors=str(CODE)) is not None  # 576-wide vectors; the stale active model is 64 wide


@pytest.mark.parametrize("scorer", ["inspect_em/trait_projection", "scorers/projection.py"])
def test_inspect_score_shows_our_one_line_error_by_registry_name_and_by_path(tmp_path: Path, scorer: str):
    log = _small_log(tmp_path / "logs")
    proc = subprocess.run([sys.executable, "-m", "inspect_ai", "score", str(log), "--scorer", scorer,
                           "-S", f"vectors={tmp_path / 'missing'}", "--output-file", str(tmp_path / "o.eval"),
                           "--display", "plain"], capture_output=True, text=True, cwd=ROOT)
    text = " ".join((proc.stdout + proc.stderr).split())  # rich wraps lines at the terminal's width
    assert proc.returncode != 0 and "trait-vector folder not found" in text, text
    assert "couldn't be loaded" not in text and "Traceback" not in text


def _long_trait(folder: Path, chars: int) -> Path:
    long = "Please explain, in detail, how to sort a list. " * (chars // 47 + 1)
    for side, text in (("pos", "Write a Python function number {} that sorts a list."),
                       ("neg", "Write a short poem number {} about the sea.")):
        rows = [{"prompt": text.format(i)} for i in range(12)]
        if side == "pos":
            rows[3] = {"prompt": long[:chars]}
        (folder / f"{side}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    trait = folder / "long.yaml"
    trait.write_text("name: long\npositive: pos.jsonl\nnegative: neg.jsonl\nposition: last_prompt_token\n")
    return trait


def test_an_over_long_prompt_is_named_before_the_model_loads(tiny_model_dir: Path, tmp_path: Path):
    trait = _long_trait(tmp_path, 5000)  # the tiny model's context is 512 tokens
    proc = cli("extract", "--model", str(tiny_model_dir), "--trait", str(trait), "--out", str(tmp_path / "v"))
    one_line(proc, "trait long: prompt", "tokens with the chat template", "context is 512", "--truncate-prompts")
    assert LOADED not in proc.stderr and not (tmp_path / "v").exists()


def test_truncated_prompts_fit_the_context(embedded_model):
    from types import SimpleNamespace

    from inspect_em.directions.traits import load_trait
    from inspect_em.runs.extract import prompts_in_context

    _, tokenizer = embedded_model
    groups = {"fit_pos": ["short one", "word " * 3000], "fit_neg": ["also short"]}
    trait = SimpleNamespace(name="t", response_max_tokens=48, system_for=lambda name: None)
    config = SimpleNamespace(max_position_embeddings=1000)
    fitted = prompts_in_context(tokenizer, config, trait, groups, "response_mean", truncate=True)
    lengths = [len(tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                 return_dict=True)["input_ids"]) for p in fitted["fit_pos"]]
    assert fitted["fit_pos"][0] == "short one" and fitted["fit_neg"] == ["also short"]
    assert 900 <= lengths[1] <= 1000 - 48  # cut to fit, with room for a 48-token answer
    with pytest.raises(InspectEmError, match="prompt 1 of fit_pos"):
        prompts_in_context(tokenizer, config, trait, groups, "response_mean")
    refusal = load_trait("refusal")  # the shipped traits' prompts fit the embedded model's 8,192 tokens
    groups = refusal.split().groups()
    assert prompts_in_context(tokenizer, SimpleNamespace(max_position_embeddings=8192), refusal, groups,
                              "last_prompt_token") == groups


def test_non_finite_vectors_are_refused_on_import_and_on_load(tmp_path: Path):
    import torch

    rows = torch.randn(31, 576)
    rows[13, 7] = float("nan")
    torch.save(rows, tmp_path / "v.pt")
    proc = cli("vectors", "import", str(tmp_path / "v.pt"), "--model", "embedded", "--trait", "x", "--best-layer",
               "12", "--out", str(tmp_path / "x"))
    one_line(proc, "non-finite", "layer(s) 12")
    tv = vector_store.load(CODE)
    tv.vectors["mean_diff"] = tv.vectors["mean_diff"].copy()
    tv.vectors["mean_diff"][5, 0] = np.inf
    tv.card = tv.card.with_causal({})
    broken = tmp_path / "broken"
    vector_store.save(tv, broken)
    with pytest.raises(InspectEmError, match=r"'mean_diff': non-finite values .* layer\(s\) 5"):
        vector_store.load(broken)


@pytest.mark.parametrize("task", ["em_freeform", "refusal_contrast"])
def test_trigger_mode_without_a_trigger_is_refused(task: str):
    import inspect_em

    with pytest.raises(InspectEmError, match="trigger_mode=both needs a trigger: add -T trigger="):
        getattr(inspect_em, task)(trigger_mode="both")


# --- one line instead of a traceback -------------------------------------------------------------------

def test_an_out_that_is_a_symlink_loop_is_one_line(tmp_path: Path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    one_line(cli("data", "insecure", "--n", "2", "--out", str(loop)), "symlink loop")


def test_a_full_disk_is_one_line_and_the_earlier_output_stays(tmp_path: Path):
    out = tmp_path / "report"
    with atomic_output(out, command="compare", config={"a": 1}) as tmp:
        (tmp / "report.md").write_text("earlier")
    with pytest.raises(InspectEmError, match="disk is full.*intact"):
        with atomic_output(out, command="compare", config={"a": 1}) as tmp:
            raise OSError(errno.ENOSPC, "No space left on device")
    assert (out / "report.md").read_text() == "earlier" and json.loads((out / MARKER).read_text())["files"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temporary left


def test_screen_refuses_a_chat_that_ends_with_a_user_turn(tmp_path: Path):
    data = tmp_path / "d.jsonl"
    chat = {"messages": [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Write code"}]}
    data.write_text(json.dumps(chat) + "\n")
    proc = cli("screen", str(data), "--model", "embedded", "--vectors", str(CODE))
    one_line(proc, "example 1 must end with an assistant answer", "user turn")
    assert LOADED not in proc.stderr


def test_importing_a_gguf_or_a_truncated_file_names_the_expected_format(tmp_path: Path):
    gguf = tmp_path / "code.gguf"
    assert cli("vectors", "export", str(CODE), "--format", "gguf", "--out", str(gguf)).returncode == 0
    proc = cli("vectors", "import", str(gguf), "--model", "embedded", "--trait", "x", "--best-layer", "12",
               "--out", str(tmp_path / "x"))
    one_line(proc, "not a persona_vectors .pt file")
    pt = tmp_path / "v.pt"
    assert cli("vectors", "export", str(CODE), "--format", "persona", "--out", str(pt)).returncode == 0
    pt.write_bytes(pt.read_bytes()[: pt.stat().st_size // 2])
    one_line(cli("vectors", "import", str(pt), "--model", "embedded", "--trait", "x", "--best-layer", "12",
                 "--out", str(tmp_path / "y")), "not a persona_vectors .pt file")


def test_a_corrupt_vectors_file_is_one_line_on_export(tmp_path: Path):
    vectors = tmp_path / "code"
    shutil.copytree(CODE, vectors)
    data = (vectors / "vectors.safetensors").read_bytes()
    (vectors / "vectors.safetensors").write_bytes(data[:100] + b"\xff" * 64 + data[164:])
    proc = cli("vectors", "export", str(vectors), "--format", "gguf", "--out", str(tmp_path / "c.gguf"))
    one_line(proc, "vectors.safetensors")
    (vectors / "vectors.safetensors").write_bytes(data[: len(data) // 3])
    one_line(cli("vectors", "export", str(vectors), "--format", "gguf", "--out", str(tmp_path / "d.gguf")),
             "vectors.safetensors")


def test_hub_offline_is_restored_in_process(monkeypatch: pytest.MonkeyPatch):
    """hub_offline() flips huggingface_hub's own flag (read once, at import) for its block and puts it
    and the environment back afterwards."""
    import huggingface_hub.constants as constants

    from inspect_em.model.loading import hub_offline

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with hub_offline():
        assert constants.HF_HUB_OFFLINE is True and os.environ["HF_HUB_OFFLINE"] == "1"
    assert constants.HF_HUB_OFFLINE is False and "HF_HUB_OFFLINE" not in os.environ


def test_the_suites_short_batch_wait_keeps_requests_batched(tiny_model_dir: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
    """Under $INSPECT_EM_HF_BATCH_WAIT (set for the suite in conftest) our batch thread serves the hf/
    provider, and requests that arrive together still share a batch: 4 samples × 2 epochs are one
    batch of 8, as with Inspect's own 2-second gathering, and every sample gets its answer. (This test
    widens the wait to 0.5 s, so a loaded machine's scheduling cannot split the batch.)"""
    from inspect_ai import eval as inspect_eval
    from inspect_ai.model import get_model
    from inspect_ai.model._providers import hf

    from inspect_em.inspect_adapter import batch_wait_from_env, batch_wait_installed, shorten_hf_batch_wait
    from inspect_em.tasks import em_freeform

    suite_wait = batch_wait_from_env()
    assert suite_wait is not None
    sizes: list[int] = []
    original = hf._generate_batch
    monkeypatch.setattr(hf, "_generate_batch", lambda batch: (sizes.append(len(batch)), original(batch))[1])
    model = get_model(f"hf/{tiny_model_dir}", device="cpu", memoize=False)
    task = em_freeform(variants="plain")  # building a task sets the suite's wait again
    assert shorten_hf_batch_wait(0.5)
    try:
        (log,) = inspect_eval(task, model=model, log_dir=str(tmp_path), display="none", limit=4, epochs=2,
                              max_tokens=4, seed=0)
        assert batch_wait_installed() == 0.5  # our thread, not the provider's own
    finally:
        shorten_hf_batch_wait(suite_wait)
    assert log.status == "success" and sizes == [8]
    assert len(log.samples) == 8 and all(s.output.completion for s in log.samples)


@pytest.mark.parametrize("value", ["soon", "0", "-1", "nan", "inf", "60"])
def test_a_bad_batch_wait_is_one_line_when_a_task_is_built(monkeypatch: pytest.MonkeyPatch, value: str):
    from inspect_em.tasks import em_freeform

    monkeypatch.setenv("INSPECT_EM_HF_BATCH_WAIT", value)
    with pytest.raises(InspectEmError, match=f"INSPECT_EM_HF_BATCH_WAIT='{value}': expected seconds between"):
        em_freeform(variants="plain")
