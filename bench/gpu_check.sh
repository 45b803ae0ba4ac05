#!/usr/bin/env bash
# The real-size GPU check in one command (about 3 minutes on one H100/H200; see bench/gpu_check.py).
#   locally first:      bash bench/gpu_wheels.sh       (the wheels and the real clip, into bench/wheels/)
#   on the GPU machine: bash bench/gpu_check.sh        (the device tool: carry ["bench/wheels"])
# Installs the carried wheels this Python lacks (--no-deps, into a private folder; the machine's own
# torch and transformers are used), runs with the repository on PYTHONPATH (no install) and writes
# gpu_check.md, rows for bench/RESULTS.md, and gpu_check.log under $OUT (else bench/out/).
# Arguments go to bench/gpu_check.py: `--tiny --device cpu` is the CPU dry run (tests/test_gpu_check.py).
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
out="${OUT:-bench/out}"
site="${GPU_CHECK_SITE:-${TMPDIR:-/tmp}/affcache-gpu-site}"
mkdir -p "$out" "$site"
if compgen -G "bench/wheels/*.whl" > /dev/null; then
  "$py" bench/gpu_env.py install bench/wheels "$site"
else
  echo "no wheels in bench/wheels/ (run bench/gpu_wheels.sh where PyPI is reachable); using what is installed"
fi
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
source=auto
if [ -f bench/wheels/video.mp4 ]; then source=bench/wheels/video.mp4; fi
"$py" bench/gpu_check.py --out "$out" --source "$source" "$@" 2>&1 | tee "$out/gpu_check.log"
