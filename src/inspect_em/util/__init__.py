"""Helpers every layer may use: what may be written where (``paths``), JSONL reading (``jsonl``)."""
