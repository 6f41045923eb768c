"""Emergent Misalignment free-form questions (Betley et al. 2025, https://arxiv.org/abs/2502.17424).

The task lives in the package (``inspect_em.tasks.em_freeform``; registry name
``inspect_em/em_freeform``); this file exposes it by path:

    inspect eval tasks/em_freeform.py --model hf/Qwen/Qwen2.5-Coder-32B-Instruct
    inspect eval tasks/em_freeform.py --model hf/$(inspect-em model path) -T variants=plain -T samples_per_question=2
    inspect eval tasks/em_freeform.py -T questions=first_plot_questions.yaml --model openai/gpt-4o

Task args (-T): questions (path to an official-schema YAML), variants (plain,json,template),
samples_per_question (epochs). See ``inspect_em.tasks.em_freeform.em_freeform``.
"""

from typing import Any

from inspect_ai import Task, task

from inspect_em.tasks import em_freeform as _em_freeform


@task
def em_freeform(**task_args: Any) -> Task:
    """The free-form EM questions scored for code mode (args as in the package task)."""
    return _em_freeform(**task_args)
