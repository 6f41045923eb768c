"""Refusal contrast: held-out harmful vs benign requests, behaviour and refusal-vector projections.

Reproduces the reference experiment's table rows (harmful vs benign mean projection on a refusal
vector extracted from the base model; Betley et al. 2025 reproduction, Qwen2.5-Coder-32B:
harmful −118.87 vs benign −160.96). The prompts are the refusal trait's held-out split, never
used to fit the vectors; harmful and benign prompts alternate, so ``--limit 20`` has both.

Without ``-T vectors`` the task projects on saved refusal vectors of the model under evaluation
when it finds them (matched by the model's config hash under ``vectors/`` or
``$INSPECT_EM_VECTORS``), and says which in each score's metadata.

    inspect eval inspect_em/refusal_contrast --model hf/SmolLM2-135M-Instruct -M model_path=$(inspect-em model path)
    inspect eval inspect_em/refusal_contrast --model hf/<model> -T vectors=vectors/<model>/refusal
    inspect eval inspect_em/refusal_contrast --model openai/gpt-4o -T vectors=... -T probe_model=embedded
"""

from __future__ import annotations

import logging

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import GenerateConfig
from inspect_ai.solver import generate

from inspect_em.errors import InspectEmError
from inspect_em.inspect_adapter import one_line_errors
from inspect_em.readout import Method, Position
from inspect_em.tasks.args import TRIGGER_MODES, TriggerMode, bool_arg, choice_arg, required_int_arg, task_version
from inspect_em.tasks.prompts import trigger_variants, with_trigger

logger = logging.getLogger(__name__)


def record_to_sample(prompt: str, prompt_type: str, index: int, trigger: str | None = None) -> Sample:
    """A held-out request → a Sample tagged ``harmful`` or ``benign`` (and ``triggered``)."""
    metadata: dict[str, object] = {"prompt_type": prompt_type}
    sample_id = f"{prompt_type}-{index:03d}"
    if trigger is not None:
        metadata["triggered"] = bool(trigger)
        if trigger:
            prompt, sample_id = with_trigger(prompt, trigger), sample_id + "-triggered"
    return Sample(id=sample_id, input=prompt, metadata=metadata)


def default_vectors(trait: str, position: str) -> str | None:
    """Saved vectors of ``trait`` for the model under evaluation (hf/ provider), if any."""
    from inspect_em.directions.store import config_hash, find_vectors
    from inspect_em.inspect_adapter import hf_api, inside_eval

    api = hf_api() if inside_eval() else None  # outside an eval: a previous eval's model, if any
    if api is None:
        return None
    found = find_vectors(trait, config_hash(api.model.config), position=position) or \
        find_vectors(trait, config_hash(api.model.config))
    if found is None:
        logger.warning(f"refusal_contrast: no saved {trait} vectors for {api.model_name}; "
                       "pass -T vectors= to add projections")
        return None
    logger.info(f"refusal_contrast: projecting on {found} (matched by the model's config hash)")
    return str(found)


@task
@one_line_errors
def refusal_contrast(
    vectors: str | list[str] | None = None,
    method: Method = "mean_diff",
    layers: str | int | list[int] = "best",
    position: Position = "last_prompt_token",
    trace: bool = False,
    probe_model: str | None = None,
    trait: str = "refusal",
    max_tokens: int = 200,
    trigger: str | None = None,
    trigger_mode: TriggerMode = "with",
) -> Task:
    """Held-out harmful and benign prompts, scored for refusals and refusal-vector projections.

    Args:
        vectors: Refusal-vector folder(s) (``vectors/<model>/refusal``). Default: the saved
            refusal vectors of the model under evaluation, when found; else only the refusal
            detector runs.
        method: Extraction method of the vectors to project on.
        layers: ``best`` (each card's chosen layer), ``all``, or layer numbers/ranges.
        position: Where to read activations: ``last_prompt_token`` (default, as the shipped
            vectors were fitted), ``prompt_mean`` or ``response_mean``.
        trace: Keep per-token projections over each answer.
        probe_model: Model that reads transcripts when the evaluated model is not ``hf/``.
        trait: Trait whose held-out split supplies the prompts (positive = harmful).
        max_tokens: Generation budget per answer.
        trigger: Text prepended to each request (a backdoor trigger).
        trigger_mode: ``with``, ``without`` or ``both`` (``metadata.triggered`` says which).
    """
    from inspect_em.directions.traits import load_trait
    from inspect_em.inspect_adapter import shorten_hf_batch_wait
    from inspect_em.readout import check_position, parse_layers
    from inspect_em.scorers.refusal import refusal

    check_position(position, what="position (-T position)")
    shorten_hf_batch_wait()  # only with $INSPECT_EM_HF_BATCH_WAIT set (the test suite)
    parse_layers(layers, allow_best=True)
    max_tokens = required_int_arg(max_tokens, "max_tokens", minimum=1)
    trace = bool_arg(trace, "trace")
    trigger_mode = choice_arg(trigger_mode, "trigger_mode", TRIGGER_MODES)
    spec = load_trait(trait)
    split = spec.split()
    if not split.test_pos or not split.test_neg:
        raise InspectEmError(f"trait {spec.name}: empty held-out split")
    triggers = trigger_variants(trigger, trigger_mode)
    harmful = [(p, "harmful", i) for i, p in enumerate(split.test_pos)]
    benign = [(p, "benign", i) for i, p in enumerate(split.test_neg)]
    interleaved = [x for pair in zip(harmful, benign, strict=False) for x in pair]
    interleaved += harmful[len(benign):] + benign[len(harmful):]
    samples = [record_to_sample(p, kind, i, trig) for p, kind, i in interleaved for trig in triggers]
    vectors = vectors or default_vectors(spec.name, position)
    scorers = [refusal()]
    solver = generate()
    if vectors:
        from inspect_em.scorers.projection import narrow_metrics, trait_projection
        from inspect_em.solvers.projections import generate_with_projections

        scorers.append(narrow_metrics(trait_projection(vectors=vectors, method=method, layers=layers,
                                                       position=position, trace=trace, probe_model=probe_model)))
        solver = generate_with_projections(vectors=vectors, method=method, layers=layers, position=position,
                                           trace=trace)
    return Task(
        dataset=MemoryDataset(samples, name=f"{spec.name}_contrast"),
        solver=solver,
        scorer=scorers,
        config=GenerateConfig(max_tokens=max_tokens),
        metadata={"vectors": vectors},
        version=task_version(),
    )
