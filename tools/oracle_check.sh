#!/usr/bin/env bash
# Independent oracle: seamless' CPU output against ONNX Runtime running the same model file
# (tools/reference_onnx.py rebuilds the network from docs/model-format.md, no shared code).
# Both families, several up-sampling modes, models written by seamless and by the Python tool,
# odd image sizes, tiled and whole runs. Fails if any max relative error exceeds 1e-4.
#
#   tools/oracle_check.sh PYTHON SEAMLESS_BINARY
set -euo pipefail
py=${1:?python with requirements-oracle.txt}
bin=${2:?seamless binary}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

configs=(
  'unet|{"in_channels":1,"classes":2,"base_filters":8,"depth":3,"batch_norm":true,"up_mode":"transpose"}'
  'unet|{"in_channels":3,"classes":4,"base_filters":4,"depth":2,"batch_norm":false,"up_mode":"bilinear"}'
  'unet|{"in_channels":2,"classes":3,"base_filters":4,"depth":3,"batch_norm":true,"up_mode":"nearest"}'
  # Wide enough (>= 128 channels) for Winograd F(2x2, 3x3) on levels 0 and 1 (A = 4), direct at level 2.
  'unet|{"in_channels":1,"classes":2,"base_filters":128,"depth":2,"batch_norm":true,"up_mode":"transpose"}'
  'fcdensenet|{"in_channels":1,"classes":3,"first_conv_filters":8,"growth_rate":4,"down_blocks":[2,2,3],"bottleneck_layers":2,"up_blocks":[3,2,2]}'
  'fcdensenet|{"in_channels":3,"classes":2,"first_conv_filters":6,"growth_rate":3,"down_blocks":[1,2],"bottleneck_layers":1,"up_blocks":[2,1]}'
)
n=0
for entry in "${configs[@]}"; do
  arch=${entry%%|*}
  cfg=${entry#*|}
  in_ch=$("$py" -c "import json,sys; print(json.loads(sys.argv[1])['in_channels'])" "$cfg")
  for maker in seamless python; do
    n=$((n + 1))
    model="$work/m$n.safetensors"
    if [ "$maker" = seamless ]; then
      "$bin" random-model --arch "$arch" --config "$cfg" --seed "$n" --out "$model" 2>/dev/null
    else
      "$py" "$here/reference_onnx.py" --random-model "$model" --arch "$arch" --config "$cfg" --seed "$n" >/dev/null
    fi
    img="$work/img$n.npy"
    "$py" -c "
import numpy as np, sys
rng = np.random.default_rng($n)
h, w = 97 + 13 * $n, 131 - 7 * $n
shape = (h, w) if $in_ch == 1 else (h, w, $in_ch)
np.save(sys.argv[1], rng.standard_normal(shape).astype(np.float32))" "$img"
    for mode in tiled whole; do
      out="$work/out$n-$mode.npy"
      extra=(--tile 64)
      [ "$mode" = whole ] && extra=(--whole)
      "$bin" infer --model "$model" --input "$img" --output "$out" --output-kind probs --normalize none -q "${extra[@]}"
      printf '%-11s %-9s %-6s ' "$arch" "$maker" "$mode"
      "$py" "$here/reference_onnx.py" --model "$model" --input "$img" --compare "$out" --tol 1e-4
    done
  done
done
# The shipped demo models on a synthetic slide, z-scored the same way on both sides.
img="$work/slide.npy"
"$bin" synth --width 301 --height 257 --seed 5 --image "$img"
for demo in "$here"/../models/*-demo.safetensors; do
  [ -f "$demo" ] || continue
  out="$work/$(basename "$demo" .safetensors).npy"
  "$bin" infer --model "$demo" --input "$img" --output "$out" --output-kind probs -q
  printf '%-30s ' "$(basename "$demo")"
  "$py" "$here/reference_onnx.py" --model "$demo" --input "$img" --zscore --compare "$out" --tol 1e-4
done
echo "oracle: all comparisons within 1e-4"
