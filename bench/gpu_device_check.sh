#!/usr/bin/env bash
# Every GPU check of the project in one call of the device tool (<= 8 minutes on an H100/H200).
# Run from the repository root on a GPU machine; writes its figures under $OUT (or ./gpu-check).
#   1. `meter status --json` and `nvidia-smi --query-gpu=...` taken at the same moment (issue 2)
#   2. bench/gpu_check.py: our CuPy kernels beside PyTorch, ours/torch per kernel (issue 3)
#   3. a short `meter agent` on the real NVML: windows with counter energy (issue 5)
#
# The GPU machine has no network. Its image has CuPy, PyTorch, nvidia-ml-py, psutil, click, httpx,
# rich, numpy and prometheus-client, not sqlite-utils: carry those wheels (pure Python), once, here:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       sqlite-utils sqlite-fts4 click-default-group
# and call the device tool with carry [".whl"] and command `bash bench/gpu_device_check.sh`.
set -uo pipefail
out="${OUT:-gpu-check}"; mkdir -p "$out"
export PYTHONUNBUFFERED=1
# meterd imports as meterd.<package> while its folders sit at the repository root; with no pip
# install here, a shim folder of links gives Python that layout.
shim=$(mktemp -d); mkdir -p "$shim/meterd"; cp meterd/__init__.py "$shim/meterd/"
for p in agent probes kernels reports collector; do ln -s "$PWD/$p" "$shim/meterd/$p"; done
export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
python3 -c "import pynvml, psutil, click, sqlite_utils, httpx, rich" \
  || { echo "missing Python packages: carry their wheels in .whl (see the top of this script)"; exit 2; }
{
  echo "== nvidia-smi (before) =="; nvidia-smi --query-gpu=index,name,power.draw,utilization.gpu,memory.used --format=csv
  echo "== meter status --json =="; python3 -m meterd.agent.cli status --json
  echo "== nvidia-smi (after) =="; nvidia-smi --query-gpu=index,name,power.draw,utilization.gpu,memory.used --format=csv
} 2>&1 | tee "$out/status.txt"
timeout 360 python3 bench/gpu_check.py 2>&1 | tee "$out/gpu_check.txt"
timeout 60 python3 -m meterd.agent.cli agent --db "$out/agent.db" --window 5 --interval 1 --duration 16 2>&1 | tail -3
python3 -m meterd.agent.cli windows --db "$out/agent.db" 2>&1 | tee "$out/windows.txt"
