#!/usr/bin/env bash
# Re-runs every experiment of docs/paper-reproduction.md and writes its tables (.txt, .csv) and
# figures (.png) into docs/figures/. Usage: tools/paper-reproduction.sh [SECTION...]
# Sections: formulas demo-unet demo-fcdn unet64 fcdn103 erf tol (default: all). Needs a release
# build (cargo build --release) and the demo models in models/. A few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
S=${SEAMLESS:-target/release/seamless}
F=docs/figures
mkdir -p "$F"
run() { # run NAME ARGS...: print the command, keep its stdout in $F/NAME.txt
    local name=$1; shift
    echo "+ seamless $*" | tee "$F/$name.txt"
    local t0=$SECONDS
    "$S" "$@" | tee -a "$F/$name.txt"
    echo "(wall $((SECONDS - t0)) s)" | tee -a "$F/$name.txt"
}
want() { [[ $# -eq 0 || " $SECTIONS " == *" $1 "* ]]; }
SECTIONS="${*:-formulas demo-unet demo-fcdn unet64 fcdn103 erf tol}"

if want formulas; then
    for m in unet-64 fcdensenet-56 fcdensenet-67 fcdensenet-103 models/unet-demo.safetensors models/fcdensenet-demo.safetensors; do
        run "info-$(basename "$m" .safetensors)" info "$m" --json
    done
fi
if want demo-unet; then
    run sweep-unet-demo sweep --model models/unet-demo.safetensors --synth 512x512 --tile 128 \
        --halos 0:exact:4 --offsets 0 --csv $F/sweep-unet-demo.csv --plot $F/sweep-unet-demo.png -q
    run reflect-unet-demo sweep --model models/unet-demo.safetensors --synth 509x509 --tile 128 \
        --halos 0:exact:8 --pad reflect --csv $F/reflect-unet-demo.csv -q
    run offsets-unet-demo sweep --model models/unet-demo.safetensors --synth 512x512 --tile 128 \
        --halos exact --offsets 0:16 --csv $F/offsets-unet-demo.csv --plot $F/offsets-unet-demo.png -q
fi
if want demo-fcdn; then
    run sweep-fcdensenet-demo sweep --model models/fcdensenet-demo.safetensors --synth 512x512 --tile 128 \
        --halos 0:exact:4 --offsets 0,1,8 --csv $F/sweep-fcdensenet-demo.csv --plot $F/sweep-fcdensenet-demo.png -q
fi
if want unet64; then
    run sweep-unet64 sweep --model unet-64 --noise --synth 512x128 --tile 128 \
        --halos 0:exact:16 --csv $F/sweep-unet64.csv --plot $F/sweep-unet64.png -q
    run offsets-unet64 sweep --model unet-64 --noise --synth 512x128 --tile 128 \
        --halos exact --offsets 0,1,2,4,8,16 --csv $F/offsets-unet64.csv --plot $F/offsets-unet64.png -q
fi
if want fcdn103; then
    run sweep-fcdensenet103 sweep --model fcdensenet-103 --noise --synth 2560x32 --tile 512x32 \
        --halos 0,288,576,864,1120,exact --csv $F/sweep-fcdensenet103.csv --plot $F/sweep-fcdensenet103.png -q
fi
if want erf; then
    run erf-unet-demo erf --model models/unet-demo.safetensors --synth 512x512 --tol 0 --tile 128 \
        --csv $F/erf-unet-demo.csv --heatmap $F/erf-unet-demo.png --plot $F/erf-profile-unet-demo.png -q
    run erf-fcdensenet-demo erf --model models/fcdensenet-demo.safetensors --synth 512x512 --tol 0 --tile 128 \
        --csv $F/erf-fcdensenet-demo.csv --heatmap $F/erf-fcdensenet-demo.png --plot $F/erf-profile-fcdensenet-demo.png -q
    run erf-unet64 erf --model unet-64 --noise \
        --csv $F/erf-unet64.csv --heatmap $F/erf-unet64.png --plot $F/erf-profile-unet64.png -q
    run erf-fcdensenet103 erf --model fcdensenet-103 --noise --synth 2432x96 --probes 4 \
        --csv $F/erf-fcdensenet103.csv --plot $F/erf-profile-fcdensenet103.png -q
fi
if want tol; then
    run erf-fcdensenet56 erf --model fcdensenet-56 --noise --synth 1600x32 --probes 8 \
        --tol 0 --tile 256x32 --halo-step 32 --tol-csv $F/tol-fcdensenet56.csv \
        --csv $F/erf-fcdensenet56.csv --plot $F/erf-profile-fcdensenet56.png -q
fi
