"""Evaluation: the field's metrics, the evaluation runner with baselines, predictions back to NIfTI."""
