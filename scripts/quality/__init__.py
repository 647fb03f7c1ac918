"""The quality benchmark (scripts/bench_quality.py) by job: inputs, clustering, selectors,
metrics, the run, report and plot."""
