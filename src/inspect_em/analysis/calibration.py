"""Steering calibration read backwards: a projection shift → the steering α that gives the same
shift, and the behaviour rate measured there (linear interpolation on a sweep's calibration curve;
an estimate)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from inspect_em.directions.store import CalibrationPoint


def estimate_from_calibration(shift: float, calibration: Sequence[CalibrationPoint]) -> dict[str, float] | None:
    """Translate a projection shift into the steering alpha that gives the same shift and the
    behaviour rate expected there (linear interpolation on the calibration curve; an estimate)."""
    if not calibration or shift is None or math.isnan(shift):
        return None
    points = sorted((p.shift, p.alpha, p.rate) for p in calibration)
    shifts = [p[0] for p in points]
    if len(points) < 2 or not (min(shifts) <= shift <= max(shifts)):
        return {"alpha": math.nan, "rate": math.nan, "outside": True}
    alpha = float(np.interp(shift, shifts, [p[1] for p in points]))
    rate = float(np.interp(shift, shifts, [p[2] for p in points]))
    return {"alpha": alpha, "rate": rate, "outside": False}
