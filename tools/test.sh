#!/usr/bin/env bash
# The test command: sets up what it needs (tools/env.sh), then runs pytest on tests/.
# Extra arguments go to pytest, e.g. `bash tools/test.sh -k softmax` or `bash tools/test.sh --runslow`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$PY" -c 'import fastattn; print("fastattn backends:", fastattn.available_backends())'
exec "$PY" -m pytest tests "$@"
