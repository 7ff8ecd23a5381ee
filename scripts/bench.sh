#!/usr/bin/env bash
# The benchmark (the project's main job), with all setup: bash scripts/bench.sh [benchmark args]
FUSEDRNN_EXTRAS="${FUSEDRNN_EXTRAS:-bench}"
source "$(dirname "$0")/setup_env.sh"
python -m benchmarks "$@"
