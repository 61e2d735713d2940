# shellcheck shell=bash disable=SC2034
# Sourced by tests/gpu/gpu_check.sh: makes Open MPI, hwloc, json-c, pcre2 and pkg-config usable.
# If the machine has them (mpicc, mpirun, and pkg-config finding json-c, libpcre2-8, hwloc),
# nothing changes. Otherwise the Debian packages in gpu-debs/ (tests/gpu/fetch_gpu_debs.sh) are
# unpacked with dpkg -x into $1/debroot (never into /) and the environment points there:
#   PATH (mpirun, mpicc, pkg-config), LD_LIBRARY_PATH, PKG_CONFIG_PATH (the .pc files'
#   prefix rewritten), OPAL_PREFIX (Open MPI's relocation variable: components, help files,
#   wrapper data), PMIX_PREFIX (PMIx's: its plugins, help files), and LLAMOE_CMAKE_MPI_ARGS for cmake.
#   source tests/gpu/gpu_env.sh WORK_DIR [--force-debs]
# Sets LLAMOE_DEPS to "system" or "debs" (or "missing" when neither works).
llamoe_gpu_env() {
  local work=$1 force=${2:-} src debs root lib
  src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  debs=${LLAMOE_GPU_DEBS:-$src/gpu-debs}
  LLAMOE_CMAKE_MPI_ARGS=""
  if [ "$force" != --force-debs ] && command -v mpicc > /dev/null && command -v mpirun > /dev/null &&
     command -v pkg-config > /dev/null && pkg-config --exists json-c libpcre2-8 hwloc 2> /dev/null; then
    LLAMOE_DEPS=system
    return 0
  fi
  if ! ls "$debs"/*.deb > /dev/null 2>&1; then
    echo "gpu_env: no MPI/hwloc/json-c/pcre2 on this machine and no .deb files in $debs (make them with tests/gpu/fetch_gpu_debs.sh on a Debian 12 machine and copy gpu-debs/ with the tree)" >&2
    LLAMOE_DEPS=missing
    return 1
  fi
  root=$work/debroot
  rm -rf "$root" && mkdir -p "$root/bin"
  for f in "$debs"/*.deb; do dpkg -x "$f" "$root" || { echo "gpu_env: dpkg -x $f failed" >&2; LLAMOE_DEPS=missing; return 1; }; done
  lib=$root/usr/lib/x86_64-linux-gnu
  # Keep the machine's own libudev (hwloc's only system dependency) when it has one.
  if ldconfig -p 2> /dev/null | grep -q 'libudev.so.1 '; then rm -f "$lib"/libudev.so.1*; fi
  # .pc files name /usr (prefix=/usr, and json-c's libdir/includedir spelt out): point
  # every such variable at the unpacked tree.
  for pc in "$lib"/pkgconfig/*.pc "$lib"/openmpi/lib/pkgconfig/*.pc "$root"/usr/share/pkgconfig/*.pc; do
    [ -f "$pc" ] && [ ! -L "$pc" ] && sed -i -E "s#^([A-Za-z_]+)=/usr(/|\$)#\1=$root/usr\2#" "$pc"
  done
  # Unversioned names (Debian makes them with update-alternatives, which dpkg -x does not run).
  ln -sf "$root/usr/bin/orterun" "$root/bin/mpirun"
  ln -sf "$root/usr/bin/orterun" "$root/bin/mpiexec"
  ln -sf "$root/usr/bin/opal_wrapper" "$root/bin/mpicc"
  command -v pkg-config > /dev/null || ln -sf "$root/usr/bin/pkgconf" "$root/bin/pkg-config"
  export PATH="$root/bin:$root/usr/bin:$PATH"
  export LD_LIBRARY_PATH="$lib:$lib/openmpi/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export PKG_CONFIG_PATH="$lib/pkgconfig:$root/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
  export OPAL_PREFIX="$root/usr"
  export PMIX_PREFIX="$lib/pmix2" PMIX_MCA_mca_base_component_path="$lib/pmix2/lib/pmix"
  # Only the components a single node needs (shared memory): the unpacked tree has no
  # UCX/libfabric/verbs, and their components would only warn that they cannot load.
  export OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader OMPI_MCA_osc=sm,pt2pt OMPI_MCA_mca_base_component_show_load_errors=0
  LLAMOE_CMAKE_MPI_ARGS="-DMPI_C_COMPILER=$root/bin/mpicc -DPKG_CONFIG_EXECUTABLE=$(command -v pkg-config)"
  LLAMOE_DEPS=debs
  return 0
}
llamoe_gpu_env "$@"
