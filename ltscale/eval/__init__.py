"""Metrics and reports for long-tailed evaluation."""
