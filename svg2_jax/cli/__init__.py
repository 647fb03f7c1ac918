"""The product's command lines (`svg2-generate`). Benchmarks live in `scripts/`."""
