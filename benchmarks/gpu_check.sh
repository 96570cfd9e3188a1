#!/usr/bin/env bash
# Everything a lent GPU machine is for, in one call (the lease is short and starts are slow): the
# extension with its CUDA kernels, the CUDA tests, the cascade timed on CUDA (AutoFocus against sniper and
# each single scale, PyTorch backend, batch 1 and 8, CUDA graphs on and off), memcheck on the new
# kernels, the ops timed, then the rest of the suite. Steps run in order of value, each with its own
# time limit, so a slow or failing step still leaves the others' figures.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#   STEPS="fps_b8 fps_b1 tests" REPEATS=2 B1_MODES=autofocus,sniper OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#   STEPS="fps_b8 base compact tests" ...: the same figures on the tree in .gpu/base too (see base)
#   STEPS="variants" VARIANTS="b32:--batch 32 --max-batch 32;b8_mb64:--batch 8 --max-batch 64" ...: other settings
#
# The device tool's call: carry [".gpu", "data/val", "bundles/default"]. .gpu/ (ignored by git) holds what
# a machine without a package registry lacks: pycocotools wheels (.gpu/whl) and runtime._C prebuilt here
# for its Python (.gpu/prebuilt, cp312, sm_90: python3.12 setup.py build_ext with AUTOFOCUS_CUDA=1); the
# script builds there only when the prebuilt module does not load. At most 8 files come back from $OUT.
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1
PY=${PY:-python3}
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
step() { echo "== $1: $2" | tee -a "$SUMMARY"; }
took() { local s=$1; shift; local t0=$SECONDS; "$@"; local rc=$?; step "$s" "rc=$rc in $((SECONDS - t0)) s"; return $rc; }

if compgen -G ".gpu/whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl \
    && export PYTHONPATH=/tmp/site SITE=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  $PY -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nvcc --version | tail -2
  nproc; lscpu | grep "Model name"
} 2>&1 | tee "$OUT/env_build.log"

# ---- the prebuilt module, else a build there ----
check_ext() { $PY -c "
import torch; from runtime import ops
assert ops.with_cuda(), 'built without CUDA'
k, s, c = ops.soft_nms_segments(torch.tensor([[0., 0, 1, 1]], device='cuda'), torch.ones(1, device='cuda'),
                                torch.tensor([0, 1], device='cuda'))
assert c.tolist() == [1], c
print('runtime._C with CUDA: loads and runs')"; }
rm -f runtime/_C*.so
if compgen -G ".gpu/prebuilt/_C*.so" >/dev/null && cp .gpu/prebuilt/_C*.so runtime/ && check_ext >>"$OUT/env_build.log" 2>&1; then
  step build "the carried prebuilt module"
else
  rm -f runtime/_C*.so; rm -rf build/temp*
  AUTOFOCUS_CUDA=1 CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=90" took build timeout 300 $PY setup.py -q build_ext --inplace \
    >>"$OUT/env_build.log" 2>&1
  check_ext >>"$OUT/env_build.log" 2>&1 || { step build "FAILED, see env_build.log"; tail -40 "$OUT/env_build.log"; exit 1; }
fi

# ---- the steps, run in the order of $STEPS ----
# No AP bootstrap on the device (AP on CUDA is the CPU's; the bootstrap is host Python, about a minute of
# device time a run): base adds the flag only where its tree knows it.
FPS_ANY="$PY benchmarks/fps.py --backend torch --device cuda --split val --no-progress --warmup-all"
FPS="$FPS_ANY --bootstrap 0"
tests() {  # the CUDA tests (why we are here)
  took pytest-cuda timeout 240 $PY -m pytest -q -m cuda -p no:cacheprovider -x --durations=5 >>"$OUT/pytest.log" 2>&1
  tail -3 "$OUT/pytest.log" | tee -a "$SUMMARY"
}
fps_b1() {  # the cascade on CUDA, batch 1 (every mode unless B1_MODES says otherwise)
  took fps-b1 timeout 200 $FPS --repeats ${REPEATS:-3} ${B1_MODES:+--modes $B1_MODES} --json "$OUT/fps_b1.json" \
    >>"$OUT/bench.log" 2>&1
}
fps_b8() {  # batch 8 (AutoFocus and sniper unless B8_MODES says otherwise)
  took fps-b8 timeout 150 $FPS --repeats ${REPEATS:-3} --batch 8 --modes ${B8_MODES:-autofocus,sniper} \
    --json "$OUT/fps_b8.json" >>"$OUT/bench.log" 2>&1
}
eager() {  # batch 8 without CUDA graphs
  took fps-b8-eager timeout 100 $FPS --repeats 2 --batch 8 --modes autofocus,sniper --cuda-graphs no \
    --json "$OUT/fps_b8_eager.json" >>"$OUT/bench.log" 2>&1
}
compact() {  # batch 8 with decode's per-batch count read (padded_decode off): what the padded decode saves
  took fps-b8-compact timeout 100 $FPS --repeats ${REPEATS:-3} --batch 8 --modes autofocus,sniper --padded-decode no \
    --json "$OUT/fps_b8_compact.json" >>"$OUT/bench.log" 2>&1
}
hotspots() {  # where the time goes (cProfile of the host, torch.profiler of the device)
  for mode in ${HOT_MODES:-autofocus sniper}; do
    took "hotspots-$mode" timeout 90 $PY benchmarks/hotspots.py --backend torch --device cuda --split val --limit 64 \
      --batch 8 --mode $mode >>"$OUT/hotspots.log" 2>&1
  done
}
memcheck() {  # memory errors in the kernels added since the last GPU run (gVisor machines refuse the sanitizer)
  took memcheck timeout 120 compute-sanitizer --tool memcheck --error-exitcode 9 $PY -m pytest -q -m cuda \
    -p no:cacheprovider tests/test_ops_boxes.py tests/test_ops_maps.py \
    tests/test_binding_checks.py \
    -k "Segments or StackPrune or PaintBoxes or Deferred or CropResizeImages or Trusted or Decode or guard" \
    >>"$OUT/pytest.log" 2>&1
  tail -2 "$OUT/pytest.log" | tee -a "$SUMMARY"
}
base() {  # fps_b8 on an earlier tree in .gpu/base (an A/B on one machine; make it with
  # `git archive REV runtime benchmarks model export pyproject.toml | tar -x -C .gpu/base`, checkpoints left out)
  [ -d .gpu/base/runtime ] || { step fps-b8-base "no .gpu/base/runtime: skipped"; return; }
  cp runtime/_C*.so .gpu/base/runtime/ && ln -sfn "$PWD/data" .gpu/base/data && ln -sfn "$PWD/bundles" .gpu/base/bundles
  local fps="$FPS_ANY"; grep -q -- "--bootstrap" .gpu/base/benchmarks/fps.py && fps="$FPS"
  ( cd .gpu/base && export PYTHONPATH=$PWD${SITE:+:$SITE} \
    && took fps-b8-base timeout 150 $fps --repeats ${REPEATS:-3} --batch 8 --modes ${B8_MODES:-autofocus,sniper} \
      --json "$OUT/fps_b8_base.json" >>"$OUT/bench.log" 2>&1 )
}
variants() {  # more fps runs, AutoFocus and sniper: VARIANTS="name:fps arguments;name:arguments" (fps_NAME.json)
  local v name argv list
  IFS=';' read -r -a list <<<"${VARIANTS:-}"
  for v in "${list[@]}"; do
    name=${v%%:*}; IFS=' ' read -r -a argv <<<"${v#*:}"
    took "fps-$name" timeout 150 $FPS --repeats ${REPEATS:-3} --modes autofocus,sniper "${argv[@]}" \
      --json "$OUT/fps_$name.json" >>"$OUT/bench.log" 2>&1
  done
}
backends() {  # engine-level TensorRT and onnxruntime-gpu (and torch) against onnxruntime on the CPU; each
  # backend whose package or plan is missing prints one line saying so
  took backend-parity timeout 180 $PY benchmarks/backend_parity.py --bundle bundles/default --images 16 \
    >>"$OUT/bench.log" 2>&1
  grep " on cuda" "$OUT/bench.log" | tail -3 | tee -a "$SUMMARY"
}
ops() { took ops-bench timeout 90 $PY benchmarks/ops.py --repeats 20 --json "$OUT/ops.json" >>"$OUT/bench.log" 2>&1; }
rest() {
  took pytest-rest timeout 200 $PY -m pytest -q -m "not cuda" -p no:cacheprovider >>"$OUT/pytest.log" 2>&1
  tail -2 "$OUT/pytest.log" | tee -a "$SUMMARY"
}
for s in ${STEPS:-tests backends fps_b1 fps_b8 eager hotspots memcheck ops rest}; do "$s"; done
# At most 8 files come back: the figures travel as one archive.
compgen -G "$OUT/*.json" >/dev/null && (cd "$OUT" && tar -cf figures.tar *.json && rm -f *.json)

echo; grep -v "^\s*$" "$OUT/bench.log" | grep -v "Warning\|warn" | tail -40
echo; cat "$SUMMARY"
