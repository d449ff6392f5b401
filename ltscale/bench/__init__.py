"""Benchmarks behind `ltscale bench ...`: each prints its figures and returns them as a dict."""
