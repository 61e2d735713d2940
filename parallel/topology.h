// Topology (hwloc): which cores a rank runs on. Node-local rank r of L gets its own contiguous
// block of the node's cores, so ranks do not fight over cores and each rank's threads stay
// near the memory they touch first. With GPUs, the rank's GPU is chosen by node-local rank and
// the cores come from those near the GPU. The caller gives the CPU backend n_cores threads
// (parallel/ calls nothing in kernels/). Binding never fails a run: if hwloc cannot bind, the
// rank warns once and runs where it is.
#pragma once
#include "base/common.h"

typedef enum { BIND_NONE = 0, BIND_CORES = 1 } bind_mode;
int bind_mode_parse(const char *s, bind_mode *out);   // "none" | "cores"; 0 on success

typedef struct {
    int n_cores;          // threads to use: cores in this rank's share; 0 = not bound, keep the default
    int first_core;       // logical index of the first core of the share; -1 when not bound
    int oversubscribed;   // more ranks than cores on this node (or near this GPU): cores shared
    int bound;            // the binding took effect
    int gpu;              // GPU index chosen (topology_bind_gpu), -1 otherwise
    char desc[192];       // "rank 1/3 (local 1/3): cores 1 (cpus 1) [oversubscribed: 3 ranks on 2 cores]"
} rank_binding;

// The split both binders use: local rank r of L over C cores gets cores [*first, *first + *count).
// L <= C: contiguous blocks, sizes differing by at most one. L > C: one core each, ranks
// r*C/L sharing (neighbours share); returns 1 in that case (oversubscribed), else 0.
int topology_share(int local_rank, int local_size, int n_cores, int *first, int *count);

// Binds the calling process (all its threads, present and future) to its share of the
// node's cores. Always returns 0; out says what happened.
int topology_bind_cpu(int rank, int size, int local_rank, int local_size, bind_mode mode, rank_binding *out);

// GPU runs: the GPU is local_rank % n_gpus; gpu_pci_bus_ids[n_gpus] are the node's GPUs'
// PCI bus ids ("0000:3b:00.0", from cudaDeviceGetPCIBusId in the CUDA code), so this file
// needs no CUDA headers. The local ranks whose GPUs share the same nearby cores split those
// cores as topology_share does. Falls back to topology_bind_cpu (warning once) when hwloc
// does not see the device. Always returns 0.
int topology_gpu_for_local_rank(int local_rank, int n_gpus);
int topology_bind_gpu(int rank, int size, int local_rank, int local_size,
                      const char *const *gpu_pci_bus_ids, int n_gpus, bind_mode mode, rank_binding *out);
