#!/usr/bin/env bash
# The GPU checks for a session lent a CUDA machine that has torch but not Ray or MLflow
# (issue 16): the `gpu`-marked tests, P3 on the GPU (eager and CUDA-graph steps) and P5 as
# Trainer processes with the `gpu: auto` probe. One call, logs and BENCHMARKS.md into $OUT.
#
#   bash benchmarks/gpu_session.sh             # on the GPU machine (about 5 minutes)
#   SMOKE=1 bash benchmarks/gpu_session.sh     # anywhere, CPU too: checks the script
#
# pydantic travels as wheels in .whl/ (see the device tool's README); with no .whl/ the
# Python in $PYTHON (default python3) must have it.
set -uo pipefail
OUT=${OUT:-$(mktemp -d)}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -n "${SMOKE:-}" ]; then
    P3=(--smoke); P5=(--trainer-processes --smoke)
else
    P3=(--device cuda --train-images 20000 --width 1 --workers 0 8 --epochs 2 --threads 4)
    P5=(--trainer-processes)
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} | tee "$OUT/gpu.txt"
timeout 120 $PY -m pytest -p no:cacheprovider -q -m gpu tests/unit/test_cuda_graph.py 2>&1 \
    | tee "$OUT/pytest.log"
timeout 120 $PY benchmarks/throughput.py "${P3[@]}" 2>&1 | tee "$OUT/throughput.log"
timeout 300 $PY benchmarks/gpu_packing.py "${P5[@]}" 2>&1 | tee "$OUT/packing.log"
cp BENCHMARKS.md "$OUT/"
echo "logs in $OUT"
