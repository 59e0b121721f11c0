#!/usr/bin/env bash
# This project's CUDA run-time environment. `source` it on a machine with an NVIDIA GPU before
# running a binary built with `--features cuda` (the engine loads the CUDA libraries at run time,
# through cudarc's dynamic loading):
#     source scripts/cuda-env.sh
# It finds the CUDA 13 user-space libraries (cuDNN 9, cuBLAS 13, NVRTC 13) under /opt and /usr
# (where a system install or a PyTorch virtual environment's pip wheels put them; set PREFER_ROOT
# to a prefix to prefer it), puts their folders on LD_LIBRARY_PATH, and adds a folder of links
# under the names cudarc's loader tries first (libcudnn.so, libcublas.so, libnvrtc.so,
# libcuda.so). For the driver library it prefers the copy whose version is the running kernel
# driver's (/proc/driver/nvidia/version) over a CUDA "compat" copy, which only works with some
# drivers. Known to work with driver 580, cuDNN 9.19, cuBLAS 13.1, NVRTC 13.0 and cudarc 0.19.
PREFER_ROOT=${PREFER_ROOT:-/opt/torch/.venv}
_all=$(find /opt /usr \
        \( -name 'libcudnn.so.9*' -o -name 'libcublas.so.13*' -o -name 'libcublasLt.so.13*' \
           -o -name 'libnvrtc.so.13*' -o -name 'libnvrtc-builtins.so.13*' -o -name 'libcuda.so.*' \) \
        -print 2>/dev/null | grep -v '/stubs/' | sort)
_pick() { local h; h=$(echo "$_all" | grep -E "/$1\$"); [ -z "$h" ] && return 0
          echo "$h" | grep -F "$PREFER_ROOT/" | head -n1 | grep . || echo "$h" | head -n1; }
CUDA_LINKS=$(mktemp -d /tmp/cuda-links.XXXXXX)
_dirs=""
for _spec in 'libcudnn.so:libcudnn\.so\.9(\.[0-9.]+)?' 'libcublas.so:libcublas\.so\.13(\.[0-9.]+)?' \
             'libcublasLt.so:libcublasLt\.so\.13(\.[0-9.]+)?' 'libnvrtc.so:libnvrtc\.so\.13(\.[0-9.]+)?' \
             ':libnvrtc-builtins\.so\.13(\.[0-9.]+)?'; do
  _name=${_spec%%:*}; _f=$(_pick "${_spec#*:}")
  if [ -z "$_f" ]; then echo "cuda-env: not found: ${_spec#*:}" >&2; continue; fi
  _d=$(dirname "$_f"); case ":$_dirs:" in *":$_d:"*) ;; *) _dirs=${_dirs:+$_dirs:}$_d ;; esac
  [ -n "$_name" ] && ln -sf "$_f" "$CUDA_LINKS/$_name"
done
# The driver library: the running driver's own version first, then the loader's cache, then any
# non-compat copy, then a compat copy.
_drv=$(sed -n 's/.*Kernel Module *\([0-9][0-9.]*\).*/\1/p' /proc/driver/nvidia/version 2>/dev/null | head -n1)
_libcuda=""
[ -n "$_drv" ] && _libcuda=$(echo "$_all" | grep -E "/libcuda\.so\.$_drv\$" | grep -v '/compat/' | head -n1)
[ -z "$_libcuda" ] && _libcuda=$(ldconfig -p 2>/dev/null | awk '$1=="libcuda.so.1" && $NF !~ /stubs|compat/ {print $NF; exit}')
[ -z "$_libcuda" ] && _libcuda=$(echo "$_all" | grep -E '/libcuda\.so\.[0-9]' | grep -v '/compat/' | head -n1)
[ -z "$_libcuda" ] && _libcuda=$(echo "$_all" | grep -E '/libcuda\.so\.[0-9]' | head -n1)
if [ -n "$_libcuda" ]; then
  ln -sf "$_libcuda" "$CUDA_LINKS/libcuda.so"
  echo "cuda-env: driver ${_drv:-unknown}, libcuda: $_libcuda" >&2
else
  echo "cuda-env: libcuda.so not found (no NVIDIA driver?)" >&2
fi
export LD_LIBRARY_PATH="$CUDA_LINKS${_dirs:+:$_dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "cuda-env: LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >&2
unset _all _dirs _spec _name _f _d _libcuda _drv
