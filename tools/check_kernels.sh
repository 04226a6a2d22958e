#!/usr/bin/env bash
# Check the CUDA kernels and backend on this machine, GPU or not, in one command:
#
#   tools/check_kernels.sh                  # every CUDA test
#   tools/check_kernels.sh f16_conv         # only tests whose name contains f16_conv
#
# Without a GPU the tests run on the emulated device (cuda_emulator/, built by the tests with the
# host C++ compiler); NVRTC comes from PyPI (tools/cuda_env.sh). Linux only.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/cuda_env.sh
export SEAMLESS_REQUIRE_NVRTC=1  # a missing NVRTC or compiler is an error here, not a skip
exec cargo test --release --test cuda_kernels --test cuda_emulator --test cli_cuda --test nvrtc_compile -- "$@"
