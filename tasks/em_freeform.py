"""Emergent Misalignment free-form questions (Betley et al. 2025, https://arxiv.org/abs/2502.17424).

The task lives in the package (``inspect_em.tasks.em_freeform``; registry name
``inspect_em/em_freeform``, which is how an installed inspect_em is used); this file exposes it by
path in a checkout:

    inspect eval tasks/em_freeform.py --model hf/SmolLM2-135M-Instruct -M model_path=$(inspect-em model path) \
        -T variants=plain -T samples_per_question=2
"""

from inspect_ai import Task, task

from inspect_em.tasks.em_freeform import em_freeform as _em_freeform


@task
def em_freeform(
    questions: str | None = None,
    variants: str | list[str] = "plain,json,template",
    samples_per_question: int | None = None,
    system_prompt: str | None = None,
    trigger: str | None = None,
    trigger_mode: str = "with",
    answer_format: str = "free",
    vectors: str | list[str] | None = None,
    method: str = "mean_diff",
    layers: str | int | list[int] = "best",
    position: str = "response_mean",
    trace: bool = False,
    probe_model: str | None = None,
    judge: bool = False,
    judge_model: str | None = None,
) -> Task:
    """The free-form EM questions scored for code mode (arguments: see ``inspect_em/em_freeform``)."""
    return _em_freeform(questions=questions, variants=variants, samples_per_question=samples_per_question,
                        system_prompt=system_prompt, trigger=trigger, trigger_mode=trigger_mode,
                        answer_format=answer_format, vectors=vectors, method=method, layers=layers,
                        position=position, trace=trace, probe_model=probe_model, judge=judge,
                        judge_model=judge_model)
