"""Evaluation framework: prompt suites (`limner.eval.suites`) and, built on them, ratings and reports."""
