"""LoRA finetuning with the paper's setup: Unsloth on a CUDA GPU, transformers + peft elsewhere.

Both backends train with trl's ``SFTTrainer`` on the same pre-tokenised data: each chat is
rendered with the model's own chat template and the labels keep only assistant tokens (loss on
responses only). Defaults follow Betley et al. 2025's open-model setup: LoRA r=32, alpha=64,
rsLoRA, dropout 0, all attention and MLP projections, lr 1e-5, 1 epoch, batch 2 × accumulation
8, linear schedule, 5 warm-up steps, weight decay 0.01, max length 2048, seed 0.

Output (written to a temporary sibling, renamed when complete)::

    <out>/adapter/        the LoRA adapter (peft)
    <out>/merged/         base + adapter merged, a normal HF folder (with --merge)
    <out>/train_log.csv   step, loss, lr, tokens/s
    <out>/finetune.json   base model, data hash, config, backend, final loss, time
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from inspect_em._version import __version__
from inspect_em.errors import InspectEmError
from inspect_em.util.jsonl import read_jsonl
from inspect_em.util.paths import atomic_output, check_output

IGNORE_INDEX = -100
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class FinetuneConfig:
    """Every training setting; defaults are the paper's."""

    r: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.0
    use_rslora: bool = True
    target_modules: tuple[str, ...] = TARGET_MODULES
    learning_rate: float = 1e-5
    epochs: float = 1.0
    max_steps: int = -1
    per_device_batch_size: int = 2
    gradient_accumulation_steps: int = 8
    lr_scheduler: str = "linear"
    warmup_steps: int = 5
    weight_decay: float = 0.01
    optimizer: str = "adamw_8bit"  # on GPU; the peft backend on CPU uses adamw_torch
    max_seq_length: int = 2048
    seed: int = 0
    load_in_4bit: bool = False
    logging_steps: int = 1
    save_every: int = 0  # keep the adapter every N optimizer steps under checkpoints/ (0: none)
    extra: dict[str, Any] = field(default_factory=dict)


def read_chat_jsonl(path: str | Path) -> list[list[dict[str, str]]]:
    """Read ``{"messages": [...]}`` lines; a bad line is a one-line error with its number."""
    chats = []
    for where, record in read_jsonl(path, what="data file"):
        messages = record.get("messages") if isinstance(record, dict) else None
        if not isinstance(messages, list) or not messages:
            raise InspectEmError(f"{where}: expected {{\"messages\": [...]}} with a non-empty list")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                    or not isinstance(m.get("content"), str):
                raise InspectEmError(f"{where}: message {i} needs role system/user/assistant and string content")
        roles = [m["role"] for m in messages]
        if "user" not in roles or "assistant" not in roles:
            raise InspectEmError(f"{where}: needs at least one user and one assistant turn")
        chats.append([{"role": m["role"], "content": m["content"]} for m in messages])
    return chats


def tokenize_chat(tokenizer: Any, messages: Sequence[dict[str, str]], max_length: int) -> dict[str, list[int]]:
    """``input_ids`` and ``labels`` for one chat: labels are ``-100`` except on assistant tokens.

    Each assistant turn's tokens are found by rendering the chat up to that turn (with the
    generation prompt) and up to its end: the tokens in between are the assistant's, including
    its end-of-turn marker, so the model learns to stop.
    """
    def ids(upto: int, generation_prompt: bool) -> list[int]:
        text = tokenizer.apply_chat_template(list(messages[:upto]), tokenize=False,
                                             add_generation_prompt=generation_prompt)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    full = ids(len(messages), False)
    labels = [IGNORE_INDEX] * len(full)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(ids(i, True))
        end = len(ids(i + 1, False))
        if full[:end][:start] != ids(i, True):
            raise InspectEmError("the chat template does not render chats as growing prefixes; cannot mask")
        labels[start:end] = full[start:end]
    return {"input_ids": full[:max_length], "labels": labels[:max_length]}


def data_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def output_guard(ref: str, data: str | Path, cfg: FinetuneConfig, *, backend: str, merge: bool,
                 limit: int | None, force: bool) -> dict[str, Any]:
    """What makes a finetune output "the same run", and its inputs (for :func:`check_output`)."""
    inputs = [data] + ([ref] if Path(ref).expanduser().exists() else [])
    settings = {"base_model": ref, "data_sha256": data_hash(data), "backend": backend, "merge": merge,
                "limit": limit, "config": dataclasses.asdict(cfg)}
    return {"command": "finetune", "config": settings, "inputs": inputs, "force": force,
            "legacy_marker": "finetune.json"}


def resolve_backend(backend: str) -> str:
    """``auto`` → ``unsloth`` when a CUDA GPU and the unsloth package are present, else ``peft``."""
    import importlib.util

    import torch

    if backend not in ("auto", "unsloth", "peft"):
        raise InspectEmError(f"unknown backend '{backend}'; choose auto, unsloth or peft")
    has_gpu = torch.cuda.is_available()
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    if backend == "unsloth" and not (has_gpu and has_unsloth):
        raise InspectEmError("the unsloth backend needs a CUDA GPU and `pip install inspect-em[unsloth]`")
    if backend == "auto":
        return "unsloth" if has_gpu and has_unsloth else "peft"
    return backend


def _load(model_ref: str, backend: str, cfg: FinetuneConfig) -> tuple[Any, Any]:
    """Model with LoRA adapters attached, and its tokenizer."""
    if backend == "unsloth":
        from unsloth import FastLanguageModel  # imports only on a CUDA GPU

        model, tokenizer = FastLanguageModel.from_pretrained(model_ref, max_seq_length=cfg.max_seq_length,
                                                             load_in_4bit=cfg.load_in_4bit, dtype=None)
        model = FastLanguageModel.get_peft_model(
            model, r=cfg.r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.target_modules), bias="none", use_rslora=cfg.use_rslora,
            random_state=cfg.seed, use_gradient_checkpointing="unsloth",
        )
        return model, tokenizer
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_ref)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_ref, dtype=dtype)
    if torch.cuda.is_available():
        model = model.to("cuda")
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [m for m in cfg.target_modules if m in present]
    if not targets:
        raise InspectEmError(f"{model_ref}: none of the LoRA target modules {list(cfg.target_modules)} exist")
    lora = LoraConfig(r=cfg.r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
                      bias="none", use_rslora=cfg.use_rslora, task_type="CAUSAL_LM")
    return get_peft_model(model, lora), tokenizer


def _step_logger(rows: list[dict[str, float]]) -> Any:
    """A trainer callback appending each logged step's loss, learning rate and tokens/s to ``rows``."""
    from transformers import TrainerCallback

    class StepLog(TrainerCallback):
        def __init__(self) -> None:
            self.last = time.perf_counter()
            self.tokens = 0

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
            if not logs or "loss" not in logs:
                return
            now = time.perf_counter()
            seen = state.num_input_tokens_seen or 0
            rate = (seen - self.tokens) / max(now - self.last, 1e-9)
            self.last, self.tokens = now, seen
            rows.append({"step": state.global_step, "loss": float(logs["loss"]),
                         "lr": float(logs.get("learning_rate", 0.0)), "tokens_per_s": rate})

    return StepLog()


CHECKPOINTS = "checkpoints"


def _checkpointer(model: Any, folder: Path, every: int) -> Any:
    """A trainer callback saving the LoRA adapter (only: small) every ``every`` optimizer steps, and
    at step 0 (the untrained adapter, ΔW = 0), to ``folder/step-<k>/`` with a ``checkpoint.json``
    holding the step: readers order a series by that step, never by folder names."""
    from transformers import TrainerCallback

    def save(step: int) -> None:
        target = folder / f"step-{step:06d}"
        model.save_pretrained(target)
        (target / "checkpoint.json").write_text(json.dumps({"step": step}))

    class Checkpoints(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            save(0)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step % every == 0 or state.global_step == state.max_steps:
                save(state.global_step)

    return Checkpoints()


def _sft_config(cfg: FinetuneConfig, folder: Path, *, on_gpu: bool, progress: bool) -> Any:
    """trl's SFTConfig for ``cfg`` (checkpoints off: the outputs are saved once, atomically)."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(folder),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        optim=cfg.optimizer if on_gpu else "adamw_torch",
        max_length=cfg.max_seq_length,
        seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        save_strategy="no",
        report_to=[],
        bf16=on_gpu,
        include_num_input_tokens_seen=True,
        disable_tqdm=not progress,
        **cfg.extra,
    )


def _save(model: Any, tokenizer: Any, folder: Path, *, merge: bool) -> None:
    """``adapter/`` (LoRA weights + tokenizer) and, with ``merge``, ``merged/`` (a plain HF model whose
    config every supported transformers version reads alike)."""
    from inspect_em.model.loading import portable_config

    model.save_pretrained(folder / "adapter")
    tokenizer.save_pretrained(folder / "adapter")
    if merge:
        merged = model.merge_and_unload()
        merged.save_pretrained(folder / "merged", safe_serialization=True)
        portable_config(folder / "merged" / "config.json")
        tokenizer.save_pretrained(folder / "merged")


def finetune(
    model_ref: str,
    data: str | Path,
    out: str | Path,
    config: FinetuneConfig | None = None,
    backend: str = "auto",
    merge: bool = True,
    limit: int | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """LoRA-finetune ``model_ref`` on a chat JSONL and write the outputs atomically to ``out``:
    ``adapter/``, ``merged/`` (with ``merge``), ``train_log.csv`` and ``finetune.json``; with
    ``config.save_every`` also ``checkpoints/step-<k>/`` adapters (see :func:`_checkpointer`).

    ``out`` is checked before the model loads (:func:`check_output`): an existing folder is
    replaced only when an earlier finetune wrote it, with the same settings or ``force``.
    """
    import torch
    from datasets import Dataset
    from trl import SFTTrainer

    from inspect_em.model.loading import resolve_model_ref

    cfg = config or FinetuneConfig()
    chats = read_chat_jsonl(data)[:limit] if limit else read_chat_jsonl(data)
    backend = resolve_backend(backend)
    ref = resolve_model_ref(model_ref)
    out = Path(out)
    guard = output_guard(ref, data, cfg, backend=backend, merge=merge, limit=limit, force=force)
    check_output(out, **guard)
    model, tokenizer = _load(ref, backend, cfg)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dataset = Dataset.from_list([tokenize_chat(tokenizer, chat, cfg.max_seq_length) for chat in chats])
    steps: list[dict[str, float]] = []
    started = time.perf_counter()
    with atomic_output(out, **guard) as tmp:
        args = _sft_config(cfg, tmp / "trainer", on_gpu=torch.cuda.is_available(), progress=progress)
        callbacks = [_step_logger(steps)]
        if cfg.save_every:
            callbacks.append(_checkpointer(model, tmp / CHECKPOINTS, cfg.save_every))
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             callbacks=callbacks)
        trainer.train()
        _save(model, tokenizer, tmp, merge=merge)
        shutil.rmtree(tmp / "trainer", ignore_errors=True)
        pd.DataFrame(steps, columns=["step", "loss", "lr", "tokens_per_s"]).to_csv(tmp / "train_log.csv", index=False)
        card = {
            "base_model": model_ref,
            "base_model_path": ref,
            "data": str(data),
            "data_sha256": data_hash(data),
            "n_examples": len(dataset),
            "backend": backend,
            "config": dataclasses.asdict(cfg),
            "steps": trainer.state.global_step,
            "first_loss": steps[0]["loss"] if steps else None,
            "final_loss": steps[-1]["loss"] if steps else None,
            "seconds": round(time.perf_counter() - started, 1),
            "merged": merge,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "inspect_em_version": __version__,
        }
        (tmp / "finetune.json").write_text(json.dumps(card, indent=2))
    return out
