"""Semantic segment maps for the training scenes (see segment.py)."""
