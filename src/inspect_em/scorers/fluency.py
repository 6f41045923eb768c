"""Fluency scorer: the perplexity of an answer under the unsteered model (a coherence check).

One teacher-forced pass over the answer with the model under evaluation (``hf/``; its generation
lock held, and no steering hook acts in this pass) or a ``probe_model``; the value is
``exp(mean negative log-likelihood of the answer's tokens)``. By default the answer is read as the
reply to an empty user turn: fluency on its own, so that an answer in another register than the
question invites (code for "what is your wish?", the behaviour a code-steering sweep is looking
for) is not counted as incoherent; ``given_question=True`` reads it after the real prompt.
Steering that breaks the model's language shows up as answers its own unsteered weights find
improbable either way.
"""

from __future__ import annotations

import math
from typing import Any

import anyio
from inspect_ai.model import ChatMessageAssistant, get_model
from inspect_ai.scorer import Score, Scorer, Target, mean, scorer, stderr
from inspect_ai.solver import TaskState

from inspect_em.errors import InspectEmError
from inspect_em.inspect_adapter import one_line_errors


def answer_nll(model: Any, prompt_ids: list[int], response_ids: list[int]) -> float:
    """Mean negative log-likelihood (nats/token) of ``response_ids`` after ``prompt_ids``."""
    import torch

    from inspect_em.model.hooks import input_device

    ids = torch.tensor([prompt_ids + response_ids], device=input_device(model))
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].double()
    targets = torch.tensor(response_ids, device=logits.device)
    return float(torch.nn.functional.cross_entropy(logits, targets).item())


@scorer(metrics=[mean(), stderr()])
@one_line_errors
def answer_perplexity(probe_model: str | None = None, given_question: bool = False) -> Scorer:
    """Perplexity of each answer under the unsteered model (lower = more fluent).

    Args:
        probe_model: HF folder/id or ``embedded``: reads every answer (needed for non-``hf/``
            models; by default an ``hf/`` model reads its own answers).
        given_question: condition on the sample's prompt (default: on an empty user turn).
    """

    async def score(state: TaskState, target: Target) -> Score:
        from inspect_em.inspect_adapter import hf_api, model_lock
        from inspect_em.model.activations import chat_ids, response_ids

        api = hf_api(get_model())
        if probe_model is not None:  # an explicit probe model always reads
            from inspect_em.model.loading import shared_model

            model, tokenizer, _ = shared_model(probe_model)
            shared = False
        elif api is not None:
            model, tokenizer, shared = api.model, api.tokenizer, True
        else:
            raise InspectEmError("answer_perplexity needs an hf/ model or probe_model=")
        messages = [m for m in state.messages if not isinstance(m, ChatMessageAssistant)]
        answer = state.output.completion if state.output else ""
        r_ids = response_ids(tokenizer, answer)
        if not r_ids:
            return Score.unscored(reason="no_response", explanation="empty answer")
        p_ids = chat_ids(tokenizer, [{"role": m.role, "content": m.text} for m in messages] if given_question
                         else [{"role": "user", "content": ""}])

        def run() -> float:
            if shared:
                with model_lock(model):
                    return answer_nll(model, p_ids, r_ids)
            return answer_nll(model, p_ids, r_ids)

        nll = await anyio.to_thread.run_sync(run)
        return Score(value=math.exp(nll), explanation=f"perplexity {math.exp(nll):.2f} over {len(r_ids)} tokens",
                     metadata={"nll_per_token": nll, "n_tokens": len(r_ids)})

    return score
