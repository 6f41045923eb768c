"""How a method's layer is chosen from its validation table (the metrics themselves come from the
batched engine, :mod:`inspect_em.directions.engine`).

The best layer per method is the one with the highest mean cross-validated Cohen's d on the fit
split (ties: CV AUROC). Held-out (in-distribution) and out-of-distribution test metrics are read at
that layer, never used to choose it. Nulls: (a) label permutation: the method refitted on the fit
split with shuffled labels, scored on the real held-out labels; (b) random directions, each
sign-fixed on the fit split. Both are summarised on AUROC and on Cohen's d: a real value means
something when it is above the null's 95th percentile; the p-value is ``(1 + #null ≥ real) / (k + 1)``.
When the two sets differ along the data's main direction of variance (code vs prose answers),
directions fitted to random groupings separate them too and AUROC saturates at 1 for real and null
alike; d still tells them apart.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from inspect_em.errors import InspectEmError


def best_layers(metrics: pd.DataFrame) -> dict[str, int]:
    """Best layer per method: highest CV Cohen's d on the fit split, ties broken by CV AUROC.

    Without CV columns (``--cv-folds 0``) it ranks by the held-out test columns (biased: the layer
    is then chosen on the data it is reported on), or by older tables' ``heldout_*`` columns.
    """
    d, a = next((pair for pair in (("cv_cohens_d", "cv_auroc"), ("test_cohens_d", "test_auroc"),
                                   ("heldout_cohens_d", "heldout_auroc")) if pair[0] in metrics), (None, None))
    if d is None:
        raise InspectEmError("metrics table has no cv_*, test_* or heldout_* Cohen's d column to choose layers by")
    ranked = metrics.assign(_d=metrics[d].fillna(-np.inf), _a=metrics[a].fillna(-np.inf))
    ranked = ranked.sort_values(["method", "_d", "_a"], ascending=[True, False, False])
    return {str(method): int(group.iloc[0]["layer"]) for method, group in ranked.groupby("method", sort=False)}
