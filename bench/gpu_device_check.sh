#!/usr/bin/env bash
# Every GPU check of the project in one call of the device tool (<= 8 minutes on an H100/H200).
# Run from the repository root on a GPU machine; writes its figures under $OUT (or ./gpu-check).
#   1. `meter status --json` and `nvidia-smi --query-gpu=...` taken at the same moment (issue 2)
#   2. bench/gpu_check.py: our CuPy kernels beside PyTorch, ours/torch per kernel (issue 3)
#   3. a short `meter agent` on the real NVML: windows with counter energy (issue 5)
set -uo pipefail
out="${OUT:-gpu-check}"; mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps -e . >/dev/null 2>&1 || python3 -m pip install -q -e . >/dev/null 2>&1
python3 -c "import pynvml, psutil, click, sqlite_utils, httpx, rich" 2>/dev/null \
  || python3 -m pip install -q nvidia-ml-py psutil click sqlite-utils httpx rich prometheus_client >/dev/null 2>&1
{
  echo "== nvidia-smi (before) =="; nvidia-smi --query-gpu=index,name,power.draw,utilization.gpu,memory.used --format=csv
  echo "== meter status --json =="; python3 -m agent.cli status --json
  echo "== nvidia-smi (after) =="; nvidia-smi --query-gpu=index,name,power.draw,utilization.gpu,memory.used --format=csv
} 2>&1 | tee "$out/status.txt"
timeout 360 python3 bench/gpu_check.py 2>&1 | tee "$out/gpu_check.txt"
timeout 60 python3 -m agent.cli agent --db "$out/agent.db" --window 5 --interval 1 --duration 16 2>&1 | tail -3
python3 -m agent.cli windows --db "$out/agent.db" 2>&1 | tee "$out/windows.txt"
