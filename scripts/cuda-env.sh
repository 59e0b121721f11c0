#!/usr/bin/env bash
# This project's CUDA run-time environment. `source` it on the GPU machine before running a binary
# built with `--features cuda` (the engine loads the CUDA libraries at run time, through cudarc's
# dynamic loading):
#     source scripts/cuda-env.sh
# It finds the CUDA 13 user-space libraries (cuDNN 9, cuBLAS 13, NVRTC 13, NCCL 2) wherever they
# are installed (preferring a PyTorch virtual environment, whose pip wheels ship them; set
# PREFER_ROOT to another prefix to prefer it), puts their folders on LD_LIBRARY_PATH, and adds a
# folder of links under the names cudarc's loader tries first (libcudnn.so, libcublas.so,
# libnvrtc.so, libnccl.so, libcuda.so). Known to work with driver 580, cuDNN 9.19, cuBLAS 13.1,
# NVRTC 13.0, NCCL 2.28 and cudarc 0.19 (features std driver cublas nvrtc cudnn nccl
# dynamic-loading cuda-13000).
PREFER_ROOT=${PREFER_ROOT:-/opt/torch/.venv}
_all=$(find / \( -path /proc -o -path /sys -o -path /dev -o -path /run \) -prune -o \
        \( -name 'libcudnn.so.9*' -o -name 'libcublas.so.13*' -o -name 'libcublasLt.so.13*' \
           -o -name 'libnvrtc.so.13*' -o -name 'libnvrtc-builtins.so.13*' -o -name 'libnccl.so.2*' \) \
        -print 2>/dev/null | grep -v '/stubs/' | sort)
_pick() { local h; h=$(echo "$_all" | grep -E "/$1\$"); [ -z "$h" ] && return 0
          echo "$h" | grep -F "$PREFER_ROOT/" | head -n1 | grep . || echo "$h" | head -n1; }
CUDA_LINKS=$(mktemp -d /tmp/cuda-links.XXXXXX)
_dirs=""
for _spec in 'libcudnn.so:libcudnn\.so\.9(\.[0-9.]+)?' 'libcublas.so:libcublas\.so\.13(\.[0-9.]+)?' \
             'libcublasLt.so:libcublasLt\.so\.13(\.[0-9.]+)?' 'libnvrtc.so:libnvrtc\.so\.13(\.[0-9.]+)?' \
             ':libnvrtc-builtins\.so\.13(\.[0-9.]+)?' 'libnccl.so:libnccl\.so\.2(\.[0-9.]+)?'; do
  _name=${_spec%%:*}; _f=$(_pick "${_spec#*:}")
  if [ -z "$_f" ]; then echo "cuda-env: not found: ${_spec#*:}" >&2; continue; fi
  _d=$(dirname "$_f"); case ":$_dirs:" in *":$_d:"*) ;; *) _dirs=${_dirs:+$_dirs:}$_d ;; esac
  [ -n "$_name" ] && ln -sf "$_f" "$CUDA_LINKS/$_name"
done
_libcuda=$(ldconfig -p 2>/dev/null | awk '$1=="libcuda.so.1" && $NF !~ /stubs/ {print $NF; exit}')
[ -n "$_libcuda" ] && ln -sf "$_libcuda" "$CUDA_LINKS/libcuda.so" || echo "cuda-env: libcuda.so.1 not found" >&2
export LD_LIBRARY_PATH="$CUDA_LINKS${_dirs:+:$_dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
echo "cuda-env: LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >&2
unset _all _dirs _spec _name _f _d _libcuda
