"""Refusal contrast: held-out harmful vs benign requests (package task ``inspect_em/refusal_contrast``),
by path in a checkout:

    inspect eval tasks/refusal_contrast.py --model hf/SmolLM2-135M-Instruct -M model_path=$(inspect-em model path)
"""

from inspect_ai import Task, task

from inspect_em.tasks.refusal_contrast import refusal_contrast as _refusal_contrast


@task
def refusal_contrast(
    vectors: str | list[str] | None = None,
    method: str = "mean_diff",
    layers: str | int | list[int] = "best",
    position: str = "last_prompt_token",
    trace: bool = False,
    probe_model: str | None = None,
    trait: str = "refusal",
    max_tokens: int = 200,
    trigger: str | None = None,
    trigger_mode: str = "with",
) -> Task:
    """Harmful vs benign held-out prompts: refusals and refusal-vector projections."""
    return _refusal_contrast(vectors=vectors, method=method, layers=layers, position=position, trace=trace,
                             probe_model=probe_model, trait=trait, max_tokens=max_tokens, trigger=trigger,
                             trigger_mode=trigger_mode)
