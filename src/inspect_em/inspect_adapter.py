"""The one place that touches Inspect internals: the ``hf/`` provider's loaded model, its prompt
rendering, a scoped wrapper around its generation, the metrics a tagged scorer reports, and the
boundary where our one-line errors become the prerequisite error Inspect prints as one line
(:func:`one_line_errors`).

What it relies on (inspect-ai's ``HuggingFaceAPI``): the attributes ``model``, ``tokenizer``,
``tokenizer_call_args`` and ``hf_chat(messages, tools)``; and that ``generate()`` builds its
generator, ``functools.partial(self.model.generate, ...)``, synchronously before its first
``await``. Requests whose generators differ never share a batch (the provider's batch key).

:func:`generation` is a context manager a solver enters around its ``generate`` call. While any
sample is inside it, the provider's ``generate`` is wrapped: each call points ``model.generate``
at a callable chosen by the calling sample's context (its steering plan), just before the
provider captures it, so requests with the same steering share batches and different steering
never does. The callable holds :func:`model_lock` while it generates and installs the steering
hooks only for that batch. The wrapper is removed when the last sample leaves.

:func:`shorten_hf_batch_wait` (``INSPECT_EM_HF_BATCH_WAIT=<seconds>``, which the test suite sets;
installed when a task is built) cuts the provider's idle time between a generation round's requests and
their answers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import math
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import anyio
from inspect_ai._util.error import PrerequisiteError

from inspect_em.errors import InspectEmError

__all__ = ["BATCH_WAIT_ENV", "batch_wait_from_env", "batch_wait_installed", "generation", "hf_api", "installed",
           "model_lock", "one_line_errors", "provider_prompt_ids", "set_scorer_metrics", "shorten_hf_batch_wait"]

_F = TypeVar("_F", bound=Callable[..., Any])


# both bases set ``message``, to the same str here (Inspect types its own as str | a rich renderable)
class InspectEmPrerequisiteError(InspectEmError, PrerequisiteError):  # type: ignore[misc]
    """An :class:`InspectEmError` as Inspect's prerequisite error (printed as its message alone)."""

    def __init__(self, message: str) -> None:
        InspectEmError.__init__(self, message)


def one_line_errors(factory: _F) -> _F:
    """Wrap a task, scorer or solver factory so an :class:`InspectEmError` it raises reaches the
    user as Inspect's prerequisite error: one line, no traceback, whether Inspect loaded the
    factory by path or by registry name."""

    @functools.wraps(factory)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return factory(*args, **kwargs)
        except InspectEmError as e:
            if isinstance(e, PrerequisiteError):
                raise
            raise InspectEmPrerequisiteError(str(e)) from None

    return wrapper  # type: ignore[return-value]  # functools.wraps keeps factory's signature; mypy sees (*args, **kwargs)

_LOCK_ATTR = "_inspect_em_lock"
_STATE_ATTR = "_inspect_em_adapter"
_PLAN: contextvars.ContextVar[Any] = contextvars.ContextVar("inspect_em_steering", default=None)
_INSTALL = threading.Lock()


_EVAL_MODULES = ("inspect_ai._eval.eval", "inspect_ai._eval.evalset", "inspect_ai._eval.score",
                 "inspect_ai._eval.task.run")


def inside_eval() -> bool:
    """Whether Inspect's eval (or score) is on the call stack: it builds registry tasks and
    ``--solver``s after setting the model under evaluation. Outside it, the active model may be a
    previous eval's, left in its context variable: nothing to check a new solver against."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__", "") in _EVAL_MODULES:
            return True
        frame = frame.f_back  # type: ignore[assignment]  # the outermost frame's f_back is None
    return False


def hf_api(model: Any | None = None) -> Any | None:
    """The ``HuggingFaceAPI`` of ``model`` (default: the model under evaluation), else None."""
    if model is None:
        from inspect_ai.model import get_model

        try:
            model = get_model()
        except Exception:  # no active model (e.g. a task built outside an eval)
            return None
    api = getattr(model, "api", None)
    if type(api).__name__ == "HuggingFaceAPI" and getattr(api, "model", None) is not None:
        return api
    return None


def set_scorer_metrics(scorer: Any, metrics: dict[str, list[Any]], *, replacing: Any) -> bool:
    """Replace the metrics a tagged scorer object reports, when they are still ``replacing`` (its
    decorator's; a task's own ``metrics=`` is kept). Inspect reads them from the scorer's registry
    info for the log header at task start and for the results after scoring. Returns whether
    they were replaced."""
    from inspect_ai._util.registry import registry_info
    from inspect_ai.scorer._scorer import SCORER_METRICS

    metadata = registry_info(scorer).metadata
    if metadata.get(SCORER_METRICS) is not replacing:
        return False
    metadata[SCORER_METRICS] = metrics
    return True


def provider_prompt_ids(api: Any, messages: list[Any]) -> list[int]:
    """Token ids of ``messages`` exactly as the hf provider tokenised them for generation."""
    chat = api.hf_chat(messages, [])
    return list(api.tokenizer(chat, **(api.tokenizer_call_args or {}))["input_ids"])


def model_lock(model: Any) -> threading.RLock:
    """A lock on one model object, held by generations under :func:`generation` and by our own
    forward passes, so a batch never interleaves with another on that model."""
    with _INSTALL:
        lock = getattr(model, _LOCK_ATTR, None)
        if lock is None:
            lock = threading.RLock()
            setattr(model, _LOCK_ATTR, lock)
    return lock


class _Generator:
    """The ``model.generate`` a batch calls: under the model lock, with the plan's steering hooks
    and, with a capture spec, the projection hooks whose packed rows replace the output's
    ``hidden_states`` (which the provider slices per sample)."""

    def __init__(self, model: Any, original: Any, plan: Any, capture: Any) -> None:
        self.model, self.original, self.plan, self.capture = model, original, plan, capture

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from contextlib import ExitStack

        from inspect_em.model.capture import capturing, eos_ids
        from inspect_em.model.steering import steered

        with model_lock(self.model), ExitStack() as stack:
            if self.plan:
                stack.enter_context(steered(self.model, self.plan))
            capture = None
            if self.capture is not None and not kwargs.get("output_hidden_states"):
                capture = stack.enter_context(capturing(self.model, self.capture))
            output = self.original(*args, **kwargs)
            if capture is not None:
                output.hidden_states = ((capture.finish(output.sequences, kwargs["input_ids"],
                                                        kwargs["attention_mask"], eos_ids(self.model)),),)
            return output


class _Installed:
    """What is installed on one provider instance, and how many samples use it."""

    def __init__(self, api: Any) -> None:
        self.api = api
        self.users = 0
        self.generators: dict[str, _Generator] = {}
        self.had_instance_generate = "generate" in vars(api.model)
        self.model_generate = api.model.generate
        self.api_generate = api.generate

    def generator(self, plan: Any, capture: Any) -> _Generator:
        key = f"{plan.key if plan else ''}|{capture.key if capture is not None else ''}"
        if key not in self.generators:
            self.generators[key] = _Generator(self.api.model, self.model_generate, plan, capture)
        return self.generators[key]

    def install(self) -> None:
        original = self.api_generate

        async def generate(*args: Any, **kwargs: Any) -> Any:
            plan, capture = _PLAN.get() or (None, None)
            # no await between pointing model.generate at this context's generator and the
            # provider capturing it in its partial: concurrent samples cannot swap it in between
            self.api.model.generate = self.generator(plan, capture)
            output = await original(*args, **kwargs)
            if capture is not None:
                _keep_capture(capture, output)
            return output

        self.api.generate = generate

    def remove(self) -> None:
        del self.api.generate  # the instance attribute; the class method shows again
        if self.had_instance_generate:
            self.api.model.generate = self.model_generate
        else:
            vars(self.api.model).pop("generate", None)


def _keep_capture(capture: Any, output: Any) -> None:
    """Move this sample's captured projections from the output's metadata to its store."""
    from inspect_ai.util import store

    from inspect_em.model.capture import unpack

    metadata = getattr(output, "metadata", None) or {}
    rows = metadata.pop("hidden_states", None)
    if not metadata:
        output.metadata = None
    if rows:
        store().set(capture.store_key, unpack(capture, rows[0][0]))


@contextmanager
def generation(api: Any, plan: Any = None, capture: Any = None) -> Iterator[None]:
    """Generations of the calling sample inside this block use ``plan`` (a steering plan, or None
    for none) and ``capture`` (a :class:`inspect_em.model.capture.CaptureSpec`, or None), under the model
    lock; the provider is unwrapped when the last sample leaves."""
    with _INSTALL:
        state: _Installed | None = getattr(api, _STATE_ATTR, None)
        if state is None:
            state = _Installed(api)
            state.install()
            setattr(api, _STATE_ATTR, state)
        state.users += 1
    outer_plan, outer_capture = _PLAN.get() or (None, None)  # nested: the inner block adds to the outer one
    token = _PLAN.set((plan or outer_plan, capture or outer_capture))
    try:
        yield
    finally:
        _PLAN.reset(token)
        with _INSTALL:
            state.users -= 1
            if state.users == 0:
                state.remove()
                delattr(api, _STATE_ATTR)


def installed(api: Any) -> bool:
    """Whether :func:`generation` currently wraps this provider (for tests)."""
    return getattr(api, _STATE_ATTR, None) is not None


BATCH_WAIT_ENV = "INSPECT_EM_HF_BATCH_WAIT"
_BATCH_WAIT: list[float] = []  # the current wait, once installed (read by the batch thread every round)
_BATCH_THREAD_NAME = "inspect_em-hf-batches"


def _asyncio_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _check_wait(seconds: float, what: str) -> float:
    """``seconds`` when it is a finite wait in [0.001, 10] (0 would spin, nan or inf hang the batch
    thread); else a one-line error naming ``what``."""
    if not (math.isfinite(seconds) and 0.001 <= seconds <= 10):
        raise InspectEmError(f"{what}: expected seconds between 0.001 and 10, e.g. 0.05")
    return seconds


def batch_wait_from_env() -> float | None:
    """``$INSPECT_EM_HF_BATCH_WAIT`` in seconds (None when unset or empty); a one-line error unless it
    is a finite number of seconds in [0.001, 10]."""
    value = os.environ.get(BATCH_WAIT_ENV, "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    return _check_wait(seconds, f"{BATCH_WAIT_ENV}={value!r}")


def shorten_hf_batch_wait(seconds: float | None = None) -> bool:
    """Shorten the ``hf/`` provider's idle time per generation round; off unless asked for.

    Inspect's provider gathers requests into a batch until none has arrived for 2 s, and every
    waiting sample checks for its answer once a second: about 3 s idle per round, which dominates
    small evals on a CPU (each test's eval, the tiny GPU check). This replaces the provider's
    ``batched_generate`` (without its trace entry) by one that gathers until none has arrived for
    ``seconds`` (default: ``$INSPECT_EM_HF_BATCH_WAIT``; nothing happens when neither is set) and
    awaits each answer instead of polling. Requests that arrive within the wait of each other share a
    batch, as before; which ones do now depends more on timing. A call with another wait changes it.
    Relies on the provider module's ``batch_queue``, ``batch_thread``, ``_QueueItem``,
    ``_batch_key``, ``_drain_batches`` and ``_generate_batch``; returns False, changing nothing,
    without them or when the provider's own batch thread already runs (its 2 s wait stays).
    """
    if seconds is None:
        seconds = batch_wait_from_env()
        if seconds is None:
            return False
    _check_wait(seconds, f"batch wait {seconds} s")
    from inspect_ai.model._providers import hf

    with _INSTALL:
        if _BATCH_WAIT:
            _BATCH_WAIT[0] = seconds
            return True
        needed = ("batch_queue", "batch_thread", "_QueueItem", "_batch_key", "_drain_batches", "_generate_batch",
                  "batched_generate")
        if not all(hasattr(hf, name) for name in needed) or hf.batch_thread is not None:
            return False

        def process_batches() -> None:
            while True:
                for batch in hf._drain_batches(hf.batch_queue, timeout=_BATCH_WAIT[0]):
                    hf._generate_batch(batch)

        async def batched_generate(input: Any) -> Any:
            with _INSTALL:
                if hf.batch_thread is None:
                    hf.batch_thread = threading.Thread(target=process_batches, daemon=True, name=_BATCH_THREAD_NAME)
                    hf.batch_thread.start()
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            hf.batch_queue.put(hf._QueueItem(input=input, future=future, key=hf._batch_key(input)))
            if _asyncio_running():
                # shielded: a cancelled sample (time limit, interrupt) must not cancel the future, which
                # its batch sets later (setting a cancelled future would fail the rest of the batch)
                return await asyncio.shield(asyncio.wrap_future(future))
            while not future.done():  # another backend (trio): poll, briefly
                await anyio.sleep(0.02)
            return future.result()

        hf.batched_generate = batched_generate
        _BATCH_WAIT.append(seconds)
        return True


def batch_wait_installed() -> float | None:
    """The wait :func:`shorten_hf_batch_wait` installed and its thread uses (None: the provider's own)."""
    from inspect_ai.model._providers import hf

    thread = getattr(hf, "batch_thread", None)
    if not _BATCH_WAIT or (thread is not None and thread.name != _BATCH_THREAD_NAME):
        return None
    return _BATCH_WAIT[0]
