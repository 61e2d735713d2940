#!/usr/bin/env bash
# Downloads the Debian packages the GPU check needs when the GPU machine lacks them (Open MPI,
# PMIx, hwloc, json-c, pcre2, pkg-config) into gpu-debs/ (git-ignored), to be copied to the GPU
# machine with the tree when it has no network. tests/gpu/gpu_check.sh unpacks them with
# `dpkg -x` into a prefix only when the machine has no MPI/hwloc/json-c/pcre2 of its own.
# Runs here (Debian 12, amd64, apt configured), as root or any user apt-get download works for.
#   tests/gpu/fetch_gpu_debs.sh [DIR]      (default: gpu-debs in the repository root)
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${1:-gpu-debs}
mkdir -p "$dir"

# Only what our programs load (checked with readelf on the unpacked files): libmpi and
# orterun need libopen-pal/rte (libopenmpi3), hwloc, libevent core+pthreads; the PMIx
# component needs libpmix2 and libmunge2; hwloc needs libudev1 (used only where the
# machine has none). No libc, libstdc++, zlib: those come with every system that runs nvcc.
pkgs=(
  libopenmpi-dev libopenmpi3 openmpi-bin openmpi-common
  libpmix2 libmunge2 libevent-core-2.1-7 libevent-pthreads-2.1-7
  libhwloc-dev libhwloc15 libudev1
  libjson-c-dev libjson-c5
  libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3
  pkgconf pkgconf-bin libpkgconf3
)
arch=$(dpkg --print-architecture)
[ "$arch" = amd64 ] || { echo "fetch_gpu_debs: this machine is $arch; the GPU machine is amd64" >&2; exit 1; }
if ! apt-cache show libopenmpi3 > /dev/null 2>&1; then
  echo "fetch_gpu_debs: apt has no package lists; running apt-get update" >&2
  apt-get update > /dev/null
fi
(cd "$dir" && rm -f ./*.deb && apt-get download "${pkgs[@]}")
# What was fetched, for the record (the check script prints it too).
(cd "$dir" && ls -1 ./*.deb | sed 's|^\./||' > MANIFEST && du -ch ./*.deb | tail -1)
echo "fetch_gpu_debs: ${#pkgs[@]} packages in $dir ($(. /etc/os-release; echo "$PRETTY_NAME"))"
