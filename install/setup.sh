#!/usr/bin/env bash
# Idempotent setup: creates .venv in the repo, installs torch for this platform, then alseg[test].
#   install/setup.sh             # mmcv-lite (pure Python, about 1 minute)
#   install/setup.sh --full-ops  # also build compiled mmcv 2.1.0 from source (about 10 minutes on 2 cores)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
full_ops=0
for arg in "$@"; do
  case "$arg" in
    --full-ops) full_ops=1 ;;
    -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg (use --full-ops or --help)" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
VPY="$here/.venv/bin/python"
pip_q() { "$VPY" -m pip install -q --disable-pip-version-check "$@"; }
stamp=".venv/.alseg-setup-$(sha256sum pyproject.toml install/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$full_ops" = 0 ]; then
  echo "setup: .venv is up to date ($stamp)"; exit 0
fi
pip_q --upgrade pip "setuptools<81" wheel
if ! "$VPY" -c "import torch" 2>/dev/null; then
  os="$(uname -s)"
  if [ "$os" = "Linux" ] && ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "setup: installing torch 2.13.0 (CPU build)"
    pip_q torch==2.13.0 || pip_q torch --index-url https://download.pytorch.org/whl/cpu
  else
    echo "setup: installing torch (default build: CUDA on Linux GPU hosts, MPS on macOS)"
    pip_q torch
  fi
fi
echo "setup: installing alseg and its test extra"
pip_q -e ".[test]"
if [ "$full_ops" = 1 ]; then
  if "$VPY" -c "import mmcv._ext" 2>/dev/null; then
    echo "setup: compiled mmcv already present"
  else
    echo "setup: building compiled mmcv 2.1.0 from source (about 10 minutes on 2 cores)"
    pip_q ninja
    "$VPY" -m pip uninstall -y -q mmcv-lite || true
    MMCV_WITH_OPS=1 "$VPY" -m pip install -q --no-build-isolation mmcv==2.1.0
  fi
fi
rm -f .venv/.alseg-setup-*
touch "$stamp"
echo "setup: done ($("$VPY" -c 'import torch, numpy; print("torch", torch.__version__, "numpy", numpy.__version__)'))"
