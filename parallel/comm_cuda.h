// Transports of the CUDA build (compiled only with LLAMOE_CUDA; see docs/gpu.md).
#pragma once
#include "parallel/comm.h"

#ifdef LLAMOE_CUDA
// NCCL over the ranks of `boot` (an MPI communicator, or comm_self for one rank), in the
// start-up order of llm.c: the caller has chosen its GPU (by node-local rank) and created the
// CUDA backend; rank 0 makes the NCCL id, boot broadcasts it, every rank calls
// ncclCommInitRank. Collective. Data buffers (alltoallv, bcast) are device memory
// (mem = COMM_MEM_DEVICE), ordered on `stream` (a cudaStream_t: the CUDA backend's); counts
// and reductions take host arrays as the interface says and travel through NCCL on the
// device. Takes ownership of boot: freeing the NCCL communicator frees boot too (and so
// finalises MPI), and abort ends the job through boot after ncclCommAbort.
// NCCL up to 2.29 refuses two ranks on one GPU ("Duplicate GPU detected"); 2.30 and later
// allow it with NCCL_MULTI_RANK_GPU_ENABLE=1. Where that does not hold this dies with a
// message saying what would (the MPI transport, or the variable) instead of failing in NCCL.
comm *comm_nccl_new(comm *boot, void *stream);
// The NCCL library's version as ncclGetVersion gives it (2.30.1 is 23001).
int comm_nccl_version(void);

// Device buffers over a host transport (MPI): the result's alltoallv and bcast take device
// memory. A rank's own share is a device-to-device copy; the peers' go straight to MPI when it
// reads device memory itself (a CUDA-aware Open MPI: comm_mpi_cuda_aware), else through
// pinned host buffers. How several ranks on one GPU exchange device data without NCCL.
// Copies are ordered on `stream` (a cudaStream_t: the CUDA backend's). Counts, reductions and
// barriers go straight to inner. Takes ownership of inner.
comm *comm_device_new(comm *inner, void *stream);
#endif
