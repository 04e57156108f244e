#!/usr/bin/env bash
# The tests: set up if needed, then run the whole suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash install/setup.sh
exec .venv/bin/python -m pytest "$@"
