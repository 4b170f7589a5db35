#!/usr/bin/env bash
# The test command: sets up what it needs (tools/env.sh), then runs pytest on tests/.
# Extra arguments go to pytest, e.g. `bash tools/test.sh -k softmax` or `bash tools/test.sh --runslow`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$PY" -c 'import fastattn, time; t = time.time(); av = fastattn.available_backends()
print("fastattn backends:", av, "| cuda build:", fastattn._backend.cuda_build(), f"(ready in {time.time() - t:.1f} s)")'
exec "$PY" -m pytest tests "$@"
