#!/bin/sh
# All inputs x seeds 0, 1 (about 1-2 min each on 2 shared cores).
cd "$(dirname "$0")/.." || exit 1
for inp in ${INPUTS:-A B C P D N M W}; do
  for seed in 0 1; do
    PYTHONPATH=. nice python research/run_lab.py "$inp" "$seed" || exit 1
  done
done
