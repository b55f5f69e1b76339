#!/usr/bin/env bash
# The GPU check (issue 16): the scale ladder and a FedMeZO-vs-FedAvg client-memory comparison on a
# >=1B shape, in under 8 minutes, written to OUT_DIR/gpu_check.json with the device description.
#
# Needs PyTorch with CUDA and transformers on the machine, this source tree, and the few wheels of
# benchmarks/gpu/wheels.txt that the machine may lack (put them in OUT_DIR/../wheels, in
# $ZOFED_WHEELS, or in benchmarks/gpu/wheels/; they are installed into OUT_DIR/.deps, never into
# the system). No internet, no Flower, no GGUF support needed.
#
#   bash benchmarks/gpu/run.sh OUT_DIR [extra check.py options, e.g. --shapes llama-3.2-1b]
set -euo pipefail

if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "usage: benchmarks/gpu/run.sh OUT_DIR [check.py options]" >&2
    exit 2
fi
OUT_DIR=$1
shift
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
DEPS="$OUT_DIR/.deps"

for wheels in "${ZOFED_WHEELS:-}" "$OUT_DIR/../wheels" "$ROOT/benchmarks/gpu/wheels"; do
    if [[ -n "$wheels" && -d "$wheels" ]] && compgen -G "$wheels/*.whl" >/dev/null; then
        echo "installing the wheels of $wheels into $DEPS" >&2
        "$PYTHON" -m pip install --quiet --no-index --no-deps --target "$DEPS" "$wheels"/*.whl
        break
    fi
done

export PYTHONPATH="$ROOT/src:$ROOT:$DEPS${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

missing=$("$PYTHON" - <<'PY'
import importlib
names = ["torch", "transformers", "peft", "pydantic", "numpy", "safetensors", "yaml", "psutil"]
missing = []
for name in names:
    try:
        importlib.import_module(name)
    except Exception:
        missing.append(name)
print(" ".join(missing))
PY
)
if [[ -n "$missing" ]]; then
    echo "run.sh: missing Python packages: $missing; put their wheels (benchmarks/gpu/wheels.txt) in benchmarks/gpu/wheels/" >&2
    exit 3
fi

"$PYTHON" -c "import torch, transformers, sys; print(f'python {sys.version.split()[0]} torch {torch.__version__} transformers {transformers.__version__} cuda {torch.cuda.is_available()}')" >&2
if command -v nvidia-smi >/dev/null; then
    nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1 || true
fi

# 8 minutes at most: measurements stop starting at --budget-s (override with e.g. --budget-s 300),
# and the hard limit keeps the JSON written so far.
timeout --signal=INT 480 "$PYTHON" "$ROOT/benchmarks/gpu/check.py" --out "$OUT_DIR/gpu_check.json" --budget-s 390 "$@"
