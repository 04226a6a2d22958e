#!/usr/bin/env bash
# Build a self-contained folder for a GPU host that has no Rust toolchain: the release binary, the
# GPU test binaries (stripped), kernels/, models/, the PyPI requirements for NVRTC, the PyTorch
# comparison scripts, and run.sh, which finds libcuda and libnvrtc on that host, runs the GPU
# tests, `seamless doctor`, the demo, `seamless bench --backend cuda` and (where python has torch)
# the comparisons with PyTorch, and writes every log into the folder it is given.
#
#   tools/bundle.sh [--with-nvrtc] [OUT]      (OUT defaults to ./bundle, which git ignores)
#   scp -r bundle gpu-host: && ssh gpu-host bundle/run.sh results-$(date +%F)
#
# --with-nvrtc also copies libnvrtc.so.13 (about 150 MB) from a pip install of
# tools/requirements-cuda.txt found here (or $SEAMLESS_NVRTC_LIB), for hosts with neither a CUDA
# toolkit nor network access. run.sh prefers the host's own NVRTC all the same.
set -euo pipefail
cd "$(dirname "$0")/.."

out=bundle
with_nvrtc=0
for arg in "$@"; do
  case "$arg" in
    --with-nvrtc) with_nvrtc=1 ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    -*) echo "unknown option $arg" >&2; exit 2 ;;
    *) out=$arg ;;
  esac
done

echo "== building (release binary and test binaries)"
# The test binaries run on a real GPU there: built for it (build.rs then neither marks the CUDA
# tests ignored nor compiles the emulator's own tests in).
export SEAMLESS_TEST_CUDA=real
cargo build --release
# The test binaries, as cargo reports them; only the GPU ones are shipped: the CLI tests need the
# binary at the path it had here.
mapfile -t test_bins < <(cargo test --release --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"] + " " + m["executable"])
')

rm -rf "$out"
mkdir -p "$out/bin" "$out/tests" "$out/lib"
cp "${CARGO_TARGET_DIR:-target}/release/seamless" "$out/bin/"
strip "$out/bin/seamless"
for entry in "${test_bins[@]}"; do
  name=${entry%% *}
  path=${entry#* }
  case "$name" in
    cuda_kernels | nvrtc_compile)
      cp "$path" "$out/tests/$name"
      strip "$out/tests/$name"
      ;;
  esac
done
for t in cuda_kernels nvrtc_compile; do
  [ -x "$out/tests/$t" ] || { echo "test binary $t was not built" >&2; exit 1; }
done
cp -r kernels "$out/kernels"
[ -d models ] && cp -r models "$out/models"
cp tools/requirements-cuda.txt "$out/"
# The PyTorch comparisons (speed, memory) and the torch definitions of both families they use.
mkdir -p "$out/tools"
cp tools/bench_gpu_vs_torch.py tools/gpu_memory_vs_torch.py tools/torch_side.py tools/seamless_models.py "$out/tools/"
git rev-parse HEAD >"$out/COMMIT" 2>/dev/null || echo unknown >"$out/COMMIT"

if [ "$with_nvrtc" = 1 ]; then
  lib=${SEAMLESS_NVRTC_LIB:-}
  if [ -z "$lib" ]; then
    for py in target/ci-cuda-venv/bin/python python3; do
      dir=$("$py" -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null) || continue
      [ -e "$dir/libnvrtc.so.13" ] && lib="$dir/libnvrtc.so.13" && break
    done
  fi
  [ -n "$lib" ] || { echo "--with-nvrtc: no libnvrtc.so.13 found (pip install -r tools/requirements-cuda.txt)" >&2; exit 1; }
  cp "$lib" "$(dirname "$lib")"/libnvrtc-builtins.so.* "$out/lib/"
fi

cat >"$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# Run seamless's GPU checks on this host and write the results into RESULTS_DIR.
#   ./run.sh RESULTS_DIR [DEVICE]
# Finds libcuda.so.1 (the driver) and libnvrtc: the host's CUDA toolkit first (a newer NVRTC can
# emit code an older driver cannot load), then pip wheels (nvidia-cuda-nvrtc), then lib/ here.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
results=${1:?usage: run.sh RESULTS_DIR [DEVICE]}
device=${2:-0}
mkdir -p "$results" && results=$(cd "$results" && pwd)
summary="$results/summary.txt"
: >"$summary"
say() { echo "$*" | tee -a "$summary"; }
failed=0

first_file() { for f in "$@"; do [ -e "$f" ] && { echo "$f"; return 0; }; done; return 1; }

libcuda=$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 /{print $NF; exit}')
[ -n "$libcuda" ] || libcuda=$(first_file /usr/lib/x86_64-linux-gnu/libcuda.so.1 /usr/lib64/libcuda.so.1 \
  /usr/local/nvidia/lib64/libcuda.so.1 /usr/local/nvidia/lib/libcuda.so.1 /usr/lib/wsl/lib/libcuda.so.1) || libcuda=""

nvrtc_dirs=()
for d in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda $(ls -d /usr/local/cuda-* 2>/dev/null | sort -rV) /opt/cuda; do
  [ -n "$d" ] && nvrtc_dirs+=("$d/lib64" "$d/lib" "$d/targets/x86_64-linux/lib")
done
host_nvrtc=$(ldconfig -p 2>/dev/null | awk '/libnvrtc\.so\.1[23] /{print $NF; exit}')
pip_dirs=()
for py in python3 python; do
  d=$("$py" -c 'import os, nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null) || continue
  pip_dirs+=("$d/cu13/lib" "$d/cuda_nvrtc/lib")
done
libnvrtc=""
for d in "${nvrtc_dirs[@]}"; do
  libnvrtc=$(first_file "$d/libnvrtc.so.13" "$d/libnvrtc.so.12") && break
done
[ -n "$libnvrtc" ] || libnvrtc=$host_nvrtc
if [ -z "$libnvrtc" ]; then
  for d in "${pip_dirs[@]}" "$here/lib"; do
    libnvrtc=$(first_file "$d/libnvrtc.so.13" "$d/libnvrtc.so.12") && break
  done
fi

export SEAMLESS_REQUIRE_GPU=1 SEAMLESS_REQUIRE_NVRTC=1 SEAMLESS_TEST_DEVICE=$device
export SEAMLESS_KERNEL_CACHE="$results/kernel-cache"
[ -n "$libnvrtc" ] && export SEAMLESS_NVRTC_LIB="$libnvrtc" LD_LIBRARY_PATH="$(dirname "$libnvrtc")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ -n "$libcuda" ] && export LD_LIBRARY_PATH="$(dirname "$libcuda")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

{
  echo "date        $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host        $(hostname)  $(uname -srm)"
  echo "commit      $(cat "$here/COMMIT")"
  echo "libcuda     ${libcuda:-NOT FOUND}"
  echo "libnvrtc    ${libnvrtc:-NOT FOUND}"
  echo "device      $device"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
} >"$results/environment.txt" 2>&1
cat "$results/environment.txt" | tee -a "$summary"

# Each step has its own time limit (a kernel that hangs must not eat the rest), and after each one
# the logs are packed into $PACK when it is set, so a run cut short still returns what it did.
step() {  # step NAME LOGFILE SECONDS COMMAND...: run, log, record PASS/FAIL/TIMEOUT with the wall time
  local name=$1 logf=$2 limit=$3
  shift 3
  local t0=$(date +%s.%N)
  timeout --kill-after=5 "$limit" "$@" >"$results/$logf" 2>&1
  local rc=$?
  local secs=$(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')" 2>/dev/null || echo "?")
  if [ $rc = 0 ]; then say "PASS  $name  (${secs} s, $logf)"
  elif [ $rc = 124 ] || [ $rc = 137 ]; then say "TIMEOUT  $name  (limit ${limit} s, $logf)"; failed=1
  else say "FAIL  $name  (exit $rc, ${secs} s, $logf)"; failed=1; fi
  pack
}
pack() {
  [ -n "${PACK:-}" ] && tar czf "$PACK.tmp" -C "$results" --exclude=./scratch --exclude=./kernel-cache --exclude='*.png' . 2>/dev/null \
    && mv "$PACK.tmp" "$PACK"
  return 0
}
# ROUNDS: interleaved rounds of the PyTorch comparison (5 for a report; fewer when device time is short).
rounds=${ROUNDS:-5}

bin="$here/bin/seamless"
step "seamless doctor" doctor.txt 240 "$bin" doctor --device "$device"
step "GPU tests: kernels vs CPU twins, tiled == whole, memory == plan" cuda_kernels.txt 240 \
  "$here/tests/cuda_kernels" --nocapture --test-threads 1
for p in f32 f16; do
  step "demo --backend cuda --precision $p" "demo-$p.txt" 60 "$bin" demo --backend cuda --precision $p --device "$device" \
    --out-dir "$results/demo-$p" --quiet
done

# Exactness through the CLI on a full-size U-Net (64 filters, 4 poolings), and CUDA f32 against the
# CPU backend on the same image.
work="$results/scratch"
mkdir -p "$work"
"$bin" synth --width 3000 --height 2500 --seed 5 --image "$work/slide.npy" >/dev/null 2>&1
"$bin" random-model --arch unet --config '{"in_channels":1,"classes":2,"base_filters":64,"depth":4}' --seed 1 \
  --out "$work/unet64-1ch.safetensors" >/dev/null 2>&1
for p in f32 f16; do
  step "unet-64 3000x2500 whole image, $p" "unet64-whole-$p.txt" 90 "$bin" infer --model "$work/unet64-1ch.safetensors" \
    --input "$work/slide.npy" --output "$work/whole-$p.npy" --output-kind probs --whole --backend cuda --precision $p --device "$device"
  step "unet-64 3000x2500 tiled 512, $p" "unet64-tiled-$p.txt" 90 "$bin" infer --model "$work/unet64-1ch.safetensors" \
    --input "$work/slide.npy" --output "$work/tiled-$p.npy" --output-kind probs --tile 512 --backend cuda --precision $p --device "$device"
  step "unet-64 tiled == whole bit for bit, $p" "unet64-cmp-$p.txt" 30 cmp "$work/whole-$p.npy" "$work/tiled-$p.npy"
done
step "unet-64 3000x2500 on the CPU backend (f32)" unet64-cpu.txt 120 "$bin" infer --model "$work/unet64-1ch.safetensors" \
  --input "$work/slide.npy" --output "$work/cpu.npy" --output-kind probs --tile 1024 --backend cpu
step "CUDA against the CPU: max |probability difference|, label agreement" unet64-vs-cpu.txt 60 python3 -c '
import os, sys, numpy as np
cpu = np.load(sys.argv[1])
bad = False
for name in sys.argv[2:]:
    g = np.load(name)
    d = np.abs(g.astype(np.float64) - cpu)
    agree = (g.argmax(-1) == cpu.argmax(-1)).mean()
    print(f"{os.path.basename(name)}: max |diff| {d.max():.3e}, mean {d.mean():.3e}, labels agree {agree:.6%}")
    # f32: the CPU engine sums in other orders (Winograd, blocking), and differences grow through
    # the 23 layers of U-Net-64: 1.2e-4 measured on an H200. f16: the storage rounding.
    limit = 1e-3 if "f32" in name else 5e-2
    if d.max() > limit:
        print(f"  over the limit {limit}")
        bad = True
sys.exit(1 if bad else 0)
' "$work/cpu.npy" "$work/whole-f32.npy" "$work/whole-f16.npy"
rm -f "$work"/*.npy

# QUICK=1: correctness only (a re-check after a change); the speed and memory steps are skipped.
if [ "${QUICK:-0}" = 1 ]; then
  say "SKIP  speed and memory steps (QUICK=1)"
  say ""
  if [ $failed = 0 ]; then say "ALL PASSED"; else say "SOME CHECKS FAILED (see the logs above)"; fi
  pack
  exit $failed
fi

# Speed and memory of the CUDA backend: per-layer table with the device's tensor-core rate, for
# both families at both precisions.
for m in unet-64 fcdensenet-103; do
  for p in f16 f32; do
    step "bench $m $p (layers, mma peak)" "bench-$m-$p.txt" 90 "$bin" bench "$m" --backend cuda --precision $p \
      --size 1024 --runs 5 --layers --device "$device"
  done
done

# Against PyTorch on the same device, where this host's python has torch with CUDA.
if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
  step "seamless vs PyTorch: throughput ($rounds interleaved rounds)" bench_vs_torch.txt 300 python3 "$here/tools/bench_gpu_vs_torch.py" \
    --seamless "$bin" --device "cuda:$device" --rounds "$rounds" --json "$results/bench_vs_torch.json"
  step "seamless vs PyTorch: device memory per window" memory_vs_torch.txt 180 python3 "$here/tools/gpu_memory_vs_torch.py" \
    --seamless "$bin" --device "cuda:$device" --windows 512,1024 --json "$results/memory_vs_torch.json"
else
  say "SKIP  seamless vs PyTorch (python3 cannot import torch with CUDA here)"
fi

# Last: it compiles every family again for two architectures, and CI runs it too (with PyPI NVRTC).
step "NVRTC compile test (sm_80, sm_90)" nvrtc_compile.txt 120 "$here/tests/nvrtc_compile" --nocapture --test-threads 1

say ""
if [ $failed = 0 ]; then say "ALL PASSED"; else say "SOME CHECKS FAILED (see the logs above)"; fi
pack
exit $failed
RUN
chmod +x "$out/run.sh"
du -sh "$out"
echo "bundle written to $out/ (run: $out/run.sh RESULTS_DIR [DEVICE])"
