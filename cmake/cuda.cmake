# The CUDA backend (kernels/cuda), the CUDA tests (tests/cuda) and CUDA benchmarks
# (bench/*.cu). The CUDA-only transports (parallel/comm_nccl.c, parallel/comm_staged.c) are
# globbed into llamoe_parallel with the other parallel/*.c and compile to nothing without
# LLAMOE_CUDA. Included by CMakeLists.txt when LLAMOE_CUDA is set:
#   -DLLAMOE_CUDA=ON    build it; stop with a clear message if nvcc, cuBLASLt or NCCL is missing
#   -DLLAMOE_CUDA=AUTO  build it when all three are found, else say so and build the CPU project
# Where things are looked for (first found wins): CUDAToolkit_ROOT / /usr/local/cuda for nvcc,
# cudart and cuBLASLt; LLAMOE_NCCL_ROOT, NCCL_ROOT, the CUDA toolkit, then the pip wheel
# layouts for NCCL (site-packages/nvidia/nccl/{include,lib} of the CUDA 12 wheels,
# site-packages/nvidia/cu13/{include,lib} of the CUDA 13 ones). Same for cuBLASLt via
# LLAMOE_CUBLAS_ROOT when the toolkit has no cuBLAS (a bare nvcc plus the nvidia-cublas wheel).
#
# Architectures: sm_80 machine code, sm_90 machine code and compute_90 PTX ("80-real;90"), so
# A100 and H100/H200 run native code and newer GPUs JIT the PTX. Override with
# -DCMAKE_CUDA_ARCHITECTURES=90 (faster build) as the GPU check script does.
string(TOUPPER "${LLAMOE_CUDA}" _llamoe_cuda_mode)
set(_llamoe_cuda_required ON)
if(_llamoe_cuda_mode STREQUAL "AUTO")
  set(_llamoe_cuda_required OFF)
endif()

macro(llamoe_cuda_missing what)
  if(_llamoe_cuda_required)
    message(FATAL_ERROR "LLAMOE_CUDA=ON: ${what} not found. Give its location (see cmake/cuda.cmake) "
                        "or configure with -DLLAMOE_CUDA=OFF (or AUTO).")
  endif()
  message(STATUS "LLAMOE_CUDA=AUTO: ${what} not found, building without the CUDA backend")
  return()
endmacro()

# ---------------------------------------------------------------------------- nvcc
if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX})
  foreach(_nvcc "${CUDAToolkit_ROOT}/bin/nvcc" /usr/local/cuda/bin/nvcc)
    if(EXISTS "${_nvcc}")
      set(CMAKE_CUDA_COMPILER "${_nvcc}" CACHE FILEPATH "CUDA compiler")
      break()
    endif()
  endforeach()
endif()
include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  llamoe_cuda_missing("nvcc (the CUDA compiler)")
endif()
if(NOT CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES "80-real;90")
endif()
enable_language(CUDA)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
find_package(CUDAToolkit REQUIRED)

# ---------------------------------------------------------------------------- libraries
# The pip wheels' site-packages/nvidia folder, as a last place to look.
find_package(Python3 COMPONENTS Interpreter QUIET)
set(_llamoe_wheels "")
if(Python3_Interpreter_FOUND)
  execute_process(COMMAND ${Python3_EXECUTABLE} -c
                  "import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0] + '/x'))"
                  OUTPUT_VARIABLE _llamoe_wheels OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
endif()

find_path(LLAMOE_CUBLASLT_INCLUDE cublasLt.h
          HINTS ${LLAMOE_CUBLAS_ROOT} ${CUDAToolkit_INCLUDE_DIRS} "${_llamoe_wheels}/cublas" "${_llamoe_wheels}/cu13"
          PATH_SUFFIXES include)
find_library(LLAMOE_CUBLASLT_LIB NAMES cublasLt libcublasLt.so.13 libcublasLt.so.12
             HINTS ${LLAMOE_CUBLAS_ROOT} ${CUDAToolkit_LIBRARY_DIR} "${_llamoe_wheels}/cublas" "${_llamoe_wheels}/cu13"
             PATH_SUFFIXES lib lib64)
find_library(LLAMOE_CUBLAS_LIB NAMES cublas libcublas.so.13 libcublas.so.12
             HINTS ${LLAMOE_CUBLAS_ROOT} ${CUDAToolkit_LIBRARY_DIR} "${_llamoe_wheels}/cublas" "${_llamoe_wheels}/cu13"
             PATH_SUFFIXES lib lib64)
if(NOT LLAMOE_CUBLASLT_INCLUDE OR NOT LLAMOE_CUBLASLT_LIB OR NOT LLAMOE_CUBLAS_LIB)
  llamoe_cuda_missing("cuBLAS/cuBLASLt (cublasLt.h, libcublasLt, libcublas)")
endif()

find_path(LLAMOE_NCCL_INCLUDE nccl.h
          HINTS ${LLAMOE_NCCL_ROOT} $ENV{NCCL_ROOT} ${CUDAToolkit_INCLUDE_DIRS} "${_llamoe_wheels}/nccl" "${_llamoe_wheels}/cu13"
          PATH_SUFFIXES include)
find_library(LLAMOE_NCCL_LIB NAMES nccl libnccl.so.2
             HINTS ${LLAMOE_NCCL_ROOT} $ENV{NCCL_ROOT} ${CUDAToolkit_LIBRARY_DIR} "${_llamoe_wheels}/nccl" "${_llamoe_wheels}/cu13"
             PATH_SUFFIXES lib lib64)
if(NOT LLAMOE_NCCL_INCLUDE OR NOT LLAMOE_NCCL_LIB)
  llamoe_cuda_missing("NCCL (nccl.h, libnccl)")
endif()
message(STATUS "CUDA backend: nvcc ${CMAKE_CUDA_COMPILER_VERSION}, archs ${CMAKE_CUDA_ARCHITECTURES}, "
               "cuBLASLt ${LLAMOE_CUBLASLT_LIB}, NCCL ${LLAMOE_NCCL_LIB}")

# ---------------------------------------------------------------------------- the backend
# The kernels are a layer of their own beside kernels/cpu (CUDA flags stay out of the C
# targets): they see base and kernels only. The CUDA transports of parallel/ (comm_nccl.c,
# comm_staged.c, compiled to nothing without LLAMOE_CUDA) get the CUDA runtime and NCCL.
file(GLOB LLAMOE_CUDA_SOURCES CONFIGURE_DEPENDS kernels/cuda/*.cu)
add_library(llamoe_kernels_cuda STATIC ${LLAMOE_CUDA_SOURCES})
llamoe_layer(llamoe_kernels_cuda SEES base kernels)
target_include_directories(llamoe_kernels_cuda PRIVATE ${LLAMOE_CUBLASLT_INCLUDE})
target_compile_definitions(llamoe_kernels_cuda PUBLIC LLAMOE_CUDA)
# The C warning flags of CMakeLists.txt reach the host compiler through nvcc's
# -forward-unknown-to-host-compiler; device-side warnings are nvcc's own (all on). Warnings
# are not errors: another host compiler on the GPU machine must not stop the build there.
# -lineinfo keeps source lines for Nsight Compute.
target_compile_options(llamoe_kernels_cuda PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-lineinfo>)
set_target_properties(llamoe_kernels_cuda PROPERTIES CUDA_SEPARABLE_COMPILATION OFF POSITION_INDEPENDENT_CODE ON)
target_link_libraries(llamoe_kernels_cuda PUBLIC llamoe_base CUDA::cudart ${LLAMOE_CUBLASLT_LIB} ${LLAMOE_CUBLAS_LIB})

target_compile_definitions(llamoe_parallel PUBLIC LLAMOE_CUDA)
target_include_directories(llamoe_parallel PRIVATE ${LLAMOE_NCCL_INCLUDE})
target_link_libraries(llamoe_parallel PUBLIC CUDA::cudart ${LLAMOE_NCCL_LIB})
target_link_libraries(llamoe_runtime PUBLIC llamoe_kernels_cuda)
# Programs and tests include the CUDA backend's and NCCL's headers where they choose a backend.
target_include_directories(llamoe INTERFACE ${LLAMOE_CUBLASLT_INCLUDE} ${LLAMOE_NCCL_INCLUDE})
# Targets created before CUDA was enabled get the architectures too (CMake checks them on
# every target that links CUDA code).
foreach(t llamoe_base llamoe_kernels llamoe_parallel llamoe_runtime)
  set_target_properties(${t} PROPERTIES CUDA_ARCHITECTURES "${CMAKE_CUDA_ARCHITECTURES}")
endforeach()

# ---------------------------------------------------------------------------- CUDA tests
# The CPU test programs with --backend cuda: every op against the CPU backend, the bundled
# model's expected tokens, and the MoE layer's copies. They exit 77 when no GPU is present,
# which ctest reports as skipped, not passed.
foreach(t test_ops test_expected test_moe_copies)
  add_test(NAME ${t}_cuda COMMAND ${t} ${CMAKE_SOURCE_DIR} --backend cuda)
  set_tests_properties(${t}_cuda PROPERTIES TIMEOUT 600 SKIP_RETURN_CODE 77)
endforeach()
# tests/cuda/check_*.c: helper programs that the GPU check script drives under mpirun.
llamoe_executables(tests/cuda/check_*.c LLAMOE_CUDA_CHECKS)
# bench/bench_*.cu: CUDA benchmarks (bench/bench_*.c are built by CMakeLists.txt).
llamoe_executables(bench/bench_*.cu LLAMOE_CUDA_BENCHES)
