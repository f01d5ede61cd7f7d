"""GhostReview performance benchmarks (not tests): ``python -m benchmarks.run [--only NAME] [--quick]``.

Each module times a project path against the naive alternative side by side in one process and prints ratios;
``benchmarks/RESULTS.md`` records measured figures with the machine and the exact command.
"""
