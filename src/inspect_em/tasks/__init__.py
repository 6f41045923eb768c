"""inspect_em tasks (registered with Inspect as ``inspect_em/<name>``)."""

from inspect_em.tasks.em_freeform import em_freeform
from inspect_em.tasks.refusal_contrast import refusal_contrast

__all__ = ["em_freeform", "refusal_contrast"]

# $INSPECT_EM_HF_BATCH_WAIT (the test suite sets it): the hf/ provider's shorter batch wait, in every
# process that loads our tasks (`inspect eval`, the demo, the GPU check)
from inspect_em.inspect_adapter import shorten_hf_batch_wait as _shorten  # noqa: E402

_shorten()
