"""From Inspect logs to reports: tidy samples (``logs``), statistics (``stats``), the comparison
(``compare``), its rendering (``report``, ``plots``), steering calibration (``calibration``) and
per-token traces (``traces``)."""
