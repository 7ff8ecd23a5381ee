#!/usr/bin/env bash
# The test suite, with all setup: bash scripts/test.sh [pytest args]
FUSEDRNN_EXTRAS="${FUSEDRNN_EXTRAS:-test,bench,examples}"
source "$(dirname "$0")/setup_env.sh"
python -m pytest -q -m "not slow" tests "$@"
