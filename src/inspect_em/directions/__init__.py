"""Trait directions, with no model and no Inspect: trait declarations (``traits``), the six methods
(``methods``), the batched fitting and validation engine (``engine``), layer choice (``validation``)
and vector folders with their typed card (``store``)."""
