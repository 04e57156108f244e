#!/usr/bin/env bash
# The main job: set up if needed, generate the demo data, run a demo experiment, write its report.
#   bash scripts/demo.sh                    # experiments/demo.toml -> demo/exp, demo/report.html
#   bash scripts/demo.sh strong-baselines   # experiments/strong-baselines.toml -> demo/strong-baselines{,.html}
#   bash scripts/demo.sh --seeds 0          # any `alseg run` option passes through
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
name=demo
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then name=$1; shift; fi
[ -f "experiments/$name.toml" ] || { echo "error: experiments/$name.toml not found" >&2; exit 2; }
out=demo/exp report=demo/report.html
[ "$name" = demo ] || { out=demo/$name; report=demo/$name.html; }
bash install/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
start=$(date +%s)
[ -f demo/data/splits/pool.txt ] || alseg demo-data --out demo/data
alseg run "experiments/$name.toml" --out "$out" "$@"
alseg report "$out" --out "$report" --overwrite
echo "$name: done in $(( $(date +%s) - start )) s; open $report"
