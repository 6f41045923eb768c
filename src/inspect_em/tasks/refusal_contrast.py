"""Refusal contrast: held-out harmful vs benign requests, behaviour and refusal-vector projections.

Reproduces the reference experiment's table rows (harmful vs benign mean projection on a refusal
vector extracted from the base model; Betley et al. 2025 reproduction, Qwen2.5-Coder-32B:
harmful −118.87 vs benign −160.96). The prompts are the refusal trait's held-out split, never
used to fit the vectors.

    inspect eval inspect_em/refusal_contrast --model hf/$(inspect-em model path) \\
        -T vectors=vectors/SmolLM2-135M-Instruct/refusal
    inspect eval inspect_em/refusal_contrast --model openai/gpt-4o -T vectors=... -T probe_model=embedded
"""

from __future__ import annotations

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import GenerateConfig
from inspect_ai.solver import generate

from ..errors import InspectEmError
from ..scorers.projection import trait_projection
from ..scorers.refusal import refusal
from ..traits import load_trait


def record_to_sample(prompt: str, prompt_type: str, index: int) -> Sample:
    """A held-out request → a Sample tagged ``harmful`` or ``benign``."""
    return Sample(id=f"{prompt_type}-{index:03d}", input=prompt, metadata={"prompt_type": prompt_type})


@task
def refusal_contrast(
    vectors: str | list[str] | None = None,
    method: str = "mean_diff",
    layers: str | list[int] = "best",
    over: str = "last_prompt_token",
    probe_model: str | None = None,
    trait: str = "refusal",
    max_tokens: int = 200,
) -> Task:
    """Held-out harmful and benign prompts, scored for refusals and refusal-vector projections.

    Args:
        vectors: Refusal-vector folder(s) (``vectors/<model>/refusal``). Without it only the
            refusal detector runs.
        method: Extraction method of the vectors to project on.
        layers: ``best``, ``all`` or layer numbers.
        over: Where to read activations: ``last_prompt_token`` (default, as the vectors were
            fitted), ``prompt_mean``, ``response_mean`` or ``per_token``.
        probe_model: Model that reads transcripts when the evaluated model is not ``hf/``.
        trait: Trait whose held-out split supplies the prompts (positive = harmful).
        max_tokens: Generation budget per answer.
    """
    spec = load_trait(trait)
    split = spec.split()
    if not split.test_pos or not split.test_neg:
        raise InspectEmError(f"trait {spec.name}: empty held-out split")
    samples = [record_to_sample(p, "harmful", i) for i, p in enumerate(split.test_pos)]
    samples += [record_to_sample(p, "benign", i) for i, p in enumerate(split.test_neg)]
    scorers = [refusal()]
    if vectors:
        scorers.append(trait_projection(vectors=vectors, method=method, layers=layers, over=over,
                                        probe_model=probe_model))
    return Task(
        dataset=MemoryDataset(samples, name=f"{spec.name}_contrast"),
        solver=generate(),
        scorer=scorers,
        config=GenerateConfig(max_tokens=max_tokens),
    )
