#!/usr/bin/env bash
# Everything a lent GPU machine is for, in one call (the lease is short and starts are slow):
# build runtime._C with its CUDA kernels, run the CUDA tests and then the rest of the suite, time the
# ops (CPU vs CUDA) and the cascade on CUDA (AutoFocus against sniper, PyTorch backend; benchmarks/settings.py).
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#
# Optional, for machines that cannot install: wheels in .gpu/whl (pycocotools) and a prebuilt
# extension in .gpu/prebuilt (used only when the build there fails). The H200 machine of 2026-11-26
# had nvcc, CMake, pybind11 and Python's headers, and lacked pycocotools.
# Each step has its own time limit and log, so a failing step still leaves the others' figures.
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1
PY=${PY:-python3}
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
step() { echo "== $1: $2" | tee -a "$SUMMARY"; }
# SKIP="rest memcheck fps variants" leaves those steps out (a rerun inside the same short lease).
want() { [[ " ${SKIP:-} " != *" $1 "* ]]; }
took() { local s=$1; shift; local t0=$SECONDS; "$@"; local rc=$?; step "$s" "rc=$rc in $((SECONDS - t0)) s"; return $rc; }

if compgen -G ".gpu/whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  $PY -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nvcc --version | tail -2
  nproc
} 2>&1 | tee "$OUT/env_build.log"

# ---- build there, else a carried prebuilt module ----
build() {
  rm -rf build/temp* runtime/_C*.so
  AUTOFOCUS_CUDA=1 CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=90" timeout 240 $PY setup.py -q build_ext --inplace
}
if took build build >>"$OUT/env_build.log" 2>&1; then :
elif compgen -G ".gpu/prebuilt/_C*.so" >/dev/null; then cp .gpu/prebuilt/_C*.so runtime/ && step build "used the carried prebuilt module"
fi
$PY -c "from runtime import ops; assert ops.with_cuda(), 'built without CUDA'; print('runtime._C with CUDA')" \
  >>"$OUT/env_build.log" 2>&1 || { step build "FAILED, see env_build.log"; tail -40 "$OUT/env_build.log"; exit 1; }

# ---- tests: the CUDA ones first (they are why we are here), then the rest ----
took pytest-cuda timeout 200 $PY -m pytest -q -m cuda -p no:cacheprovider >"$OUT/pytest_cuda.log" 2>&1
tail -3 "$OUT/pytest_cuda.log" | tee -a "$SUMMARY"

# ---- timings ----
want ops && took ops-bench timeout 90 $PY benchmarks/ops.py --repeats 30 --json "$OUT/ops.json" >"$OUT/bench.log" 2>&1
took bundle timeout 90 $PY export/build_engine.py --out bundles/gpu >>"$OUT/bench.log" 2>&1
want fps && took fps-cuda timeout 200 $PY benchmarks/fps.py --bundle bundles/gpu --backend torch --device cuda --split val \
  --repeats 2 --no-progress --json "$OUT/fps_cuda.json" >>"$OUT/bench.log" 2>&1

# Batching settings (padding x chips_on_host) against sniper, one process, the same images.
want variants && took settings-b1 timeout 150 $PY benchmarks/settings.py --bundle bundles/gpu --backend torch \
  --device cuda --limit 150 >>"$OUT/bench.log" 2>&1
want variants && took settings-b4 timeout 90 $PY benchmarks/settings.py --bundle bundles/gpu --backend torch \
  --device cuda --limit 150 --batch 4 >>"$OUT/bench.log" 2>&1

want rest && took pytest-rest timeout 240 $PY -m pytest -q -m "not cuda" -p no:cacheprovider >"$OUT/pytest_rest.log" 2>&1
want rest && tail -3 "$OUT/pytest_rest.log" | tee -a "$SUMMARY"

# Memory errors in the CUDA kernels (Firecracker machines only: gVisor refuses the sanitizer).
want memcheck && took memcheck timeout 120 compute-sanitizer --tool memcheck --error-exitcode 9 $PY -m pytest -q -m cuda \
  -p no:cacheprovider tests/test_ops_maps.py tests/test_ops_boxes.py >"$OUT/sanitizer.log" 2>&1
want memcheck && tail -4 "$OUT/sanitizer.log" | tee -a "$SUMMARY"
want fps && took fps-cuda-batch4 timeout 90 $PY benchmarks/fps.py --bundle bundles/gpu --backend torch --device cuda --split val \
  --batch 4 --modes autofocus,sniper --repeats 2 --no-progress >>"$OUT/bench.log" 2>&1

echo; cat "$OUT/bench.log" | grep -v "^\s*$" | tail -60
echo; cat "$SUMMARY"
