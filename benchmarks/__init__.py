"""Speed, scale and effectiveness measurements; run one with ``python -m benchmarks.<name>``."""
