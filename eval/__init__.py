"""Metrics, instance clustering and the offline evaluator."""
