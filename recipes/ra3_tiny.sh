#!/usr/bin/env bash
# The tiny recipe that runs anywhere (CPU, no downloads, ~3 minutes on 2 cores): `make demo` runs it.
#   bash recipes/ra3_tiny.sh [key=value ...]
set -euo pipefail
exec ra3 demo --recipe tiny_cpu --run-dir "${RUN_DIR:-runs/demo}" "$@"
