"""Speed and accuracy benchmarks: scripts that print figures (python -m benchmarks.bench_model, make bench)."""
