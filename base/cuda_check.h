// The CUDA runtime's error check, shared by the CUDA kernels and the CUDA transports: names
// the call, file and line, then dies through die() (so that under MPI one failing rank ends
// the job). Include only where the CUDA runtime headers are available.
#pragma once
#include <cuda_runtime_api.h>

#include "base/common.h"

#define cudaCheck(call) cuda_check_rt((call), #call, __FILE__, __LINE__)

static inline void cuda_check_rt(cudaError_t e, const char *call, const char *file, int line) {
    if (e != cudaSuccess) die("%s:%d: %s failed: %s (%s)", file, line, call, cudaGetErrorString(e), cudaGetErrorName(e));
}
