#!/bin/bash
# Fill one OME-Zarr from a Slurm job array: task i of n computes tiles i, i+n, i+2n, ... of the same
# run, and the last task to finish moves the store into place (docs/cluster.md).
#
#   sbatch tools/cluster/slurm-array.sh                               # all 16 shards
#   sbatch --array=5 --export=ALL,SHARDS=16 tools/cluster/slurm-array.sh   # rerun shard 5 of 16
#
# Every path must be on a filesystem all nodes share, under the same path on each.
#SBATCH --job-name=seamless
#SBATCH --array=0-15
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=04:00:00
#SBATCH --output=seamless-%A_%a.log
# On CPUs instead: drop --gres above, raise --cpus-per-task, and set BACKEND=cpu.
set -euo pipefail

MODEL=${MODEL:-/shared/models/unet.safetensors}
INPUT=${INPUT:-/shared/slides/slide.svs}
OUTPUT=${OUTPUT:-/shared/results/slide-labels.zarr}
TILE=${TILE:-1024x1024}   # explicit: --tile auto depends on each node's free memory
BACKEND=${BACKEND:-cuda}  # cuda (one GPU per task) or cpu
SEAMLESS=${SEAMLESS:-seamless}

INDEX=$SLURM_ARRAY_TASK_ID
# The shard count of the whole array; a rerun of a few tasks (--array=5) must set SHARDS.
COUNT=${SHARDS:-$SLURM_ARRAY_TASK_COUNT}

# --resume: a task that was killed, preempted or timed out continues its own tiles when rerun
# (and starts afresh when it has none). --threads: the same on every task (part of the run).
exec "$SEAMLESS" infer --model "$MODEL" --input "$INPUT" --output "$OUTPUT" \
    --tile "$TILE" --backend "$BACKEND" --threads "${SLURM_CPUS_PER_TASK:-8}" \
    --shard "$INDEX/$COUNT" --resume \
    --summary "$OUTPUT.summary-$INDEX-of-$COUNT.json"
