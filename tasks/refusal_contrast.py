"""Refusal contrast: held-out harmful vs benign requests (package task ``inspect_em/refusal_contrast``).

    inspect eval tasks/refusal_contrast.py --model hf/$(inspect-em model path) \
        -T vectors=vectors/SmolLM2-135M-Instruct/refusal

Task args (-T): vectors, method, layers, over, probe_model, trait, max_tokens.
See ``inspect_em.tasks.refusal_contrast.refusal_contrast``.
"""

from typing import Any

from inspect_ai import Task, task

from inspect_em.tasks import refusal_contrast as _refusal_contrast


@task
def refusal_contrast(**task_args: Any) -> Task:
    """Harmful vs benign held-out prompts: refusals and refusal-vector projections."""
    return _refusal_contrast(**task_args)
