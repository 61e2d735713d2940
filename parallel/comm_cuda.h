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
// NCCL up to 2.29 refuses two ranks on one GPU ("Duplicate GPU detected"); this dies with a
// message saying so (use the MPI transport there) instead of failing inside NCCL.
comm *comm_nccl_new(comm *boot, void *stream);

// The same transport seen through the other kind of memory, by staging every data buffer:
//   inner carries host memory (MPI): the result takes device buffers and moves them through
//     pinned host memory - how several ranks on one GPU exchange GPU data;
//   inner carries device memory (NCCL): the result takes host buffers and moves them through
//     device memory - how the host-packed dispatch of parallel/dispatch.c runs over NCCL.
// Copies are ordered on `stream` (a cudaStream_t: the CUDA backend's). Counts, reductions and
// barriers go straight to inner. Takes ownership of inner.
comm *comm_staged_new(comm *inner, void *stream);
#endif
