#!/usr/bin/env bash
# The main job: the benchmark suite on whatever this machine has (speed on a GPU; the correctness half and a
# plain note on a machine without one). Extra arguments go to `python -m fastattn.bench`, e.g. --quick.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec "$PY" -m fastattn.bench "$@"
