"""Evaluation: ``metrics`` (MSE, MAE, both PCCs, aggregation), ``references`` (methods that need
no training, scored next to every model), ``scoring`` (one fold's held-out samples) and
``reports`` (metrics.json, per-gene CSV, predictions, plots, the summary table)."""
