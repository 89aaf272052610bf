"""Training: the two-phase SMHDR recipe (train_phase1.py, train_phase2.py)."""
