"""Evaluation: reconstruct scenes, score them against their labels, write the results (test.py)."""
