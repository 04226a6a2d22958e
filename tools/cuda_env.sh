# Sourced, not run: NVRTC and the CUDA headers from PyPI in target/ci-cuda-venv (created and filled
# on first use), on LD_LIBRARY_PATH for this shell, and the kernel cache inside the checkout.
# Used by .ci/run and tools/check_kernels.sh; needs no GPU and no CUDA toolkit.
cuda_venv=target/ci-cuda-venv
if [ ! -x "$cuda_venv/bin/python" ]; then
  python3 -m venv "$cuda_venv"
fi
"$cuda_venv/bin/pip" install --quiet --disable-pip-version-check -r tools/requirements-cuda.txt
cu13=$("$cuda_venv/bin/python" -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
export LD_LIBRARY_PATH="$cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export SEAMLESS_CUDA_INCLUDE="$cu13/include"
export SEAMLESS_KERNEL_CACHE="$PWD/target/kernel-cache"
