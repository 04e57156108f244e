#!/usr/bin/env bash
# The main job: set up if needed, generate the demo data, run the demo experiment, write the report.
#   bash scripts/demo.sh                 # 1 seed
#   bash scripts/demo.sh --seeds 0,1,2   # more seeds (any `alseg run` option passes through)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash install/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
start=$(date +%s)
[ -f demo/data/splits/pool.txt ] || alseg demo-data --out demo/data
alseg run experiments/demo.toml --out demo/exp "$@"
alseg report demo/exp --out demo/report.html --overwrite
echo "demo: done in $(( $(date +%s) - start )) s; open demo/report.html"
