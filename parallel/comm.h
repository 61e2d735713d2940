// The communicator: one interface for moving bytes between ranks, filled by comm_mpi.c (now),
// comm_self.c (one process, for tests and tools) and comm_nccl.c. Like nccl-tests, a
// struct of function pointers: callers write c->alltoallv(c, ...) and never see MPI or NCCL.
//
// Buffers are void* with byte counts so the same calls carry float rows, int metadata and,
// with a device transport, GPU memory. Counts and displacement arrays are host memory always.
//
// Every call is collective over all ranks of the communicator (abort and free excepted).
// Calls return 0, or -1 for a failure the caller can report; transport errors that leave the
// job in an unknown state (a failed MPI call) do not return: they print the call, file and
// line and abort every rank.
#pragma once
#include <stddef.h>
#include <stdint.h>

// Where the data buffers given to alltoallv and bcast live: host memory for MPI, device
// memory for NCCL and for MPI behind comm_device_new (parallel/comm_cuda.h).
typedef enum { COMM_MEM_HOST = 0, COMM_MEM_DEVICE = 1 } comm_mem;

typedef struct comm comm;
struct comm {
    const char *name;             // "mpi", "self", "nccl", "mpi+staged", "mpi+cuda-aware"
    int rank, size;
    int local_rank, local_size;   // within the node (processes sharing memory)
    comm_mem mem;                 // where data buffers live; set once after creation
    void *impl;                   // the transport's own state

    // Byte all-to-all-v: send_bytes[p] bytes from send + send_displ[p] go to peer p, and
    // recv_bytes[p] bytes from peer p land at recv + recv_displ[p]. Counts are size_t: any
    // message size works (see comm_mpi.c for how counts above INT_MAX travel).
    // recv_bytes[p] must equal what p sends to this rank. send and recv must not overlap.
    int (*alltoallv)(comm *c, const void *send, const size_t *send_bytes, const size_t *send_displ,
                     void *recv, const size_t *recv_bytes, const size_t *recv_displ);
    // Counts exchange: send[p * n + i] goes to peer p and arrives as recv[this rank * n + i]
    // on it; recv[p * n + i] is what peer p sent here. n values per peer (an all-to-all).
    int (*exchange_counts)(comm *c, const int64_t *send, int64_t *recv, int n);
    int (*allreduce_sum_i64)(comm *c, int64_t *vals, int n);    // in place
    int (*allreduce_max_f64)(comm *c, double *vals, int n);     // in place (timings, peak memory)
    int (*bcast)(comm *c, void *buf, size_t bytes, int root);
    // bcast for a wait that may last minutes (an idle server's ranks waiting for the next
    // step): a waiting rank sleeps between polls instead of spinning a core. Every rank of one
    // broadcast calls the same one of the two. May be NULL (then callers use bcast).
    int (*bcast_idle)(comm *c, void *buf, size_t bytes, int root);
    int (*barrier)(comm *c);
    // Ends every rank of the job with this exit code, from any one rank; never returns.
    void (*abort)(comm *c, int code);
    // Releases the communicator (collective for MPI: MPI_Finalize when comm_mpi_init started
    // MPI). c is invalid afterwards.
    void (*free)(comm *c);
};

// ---------------------------------------------------------------------------- constructors
// MPI over MPI_COMM_WORLD (a duplicate of it, so our traffic never matches anyone else's).
// Calls MPI_Init_thread unless MPI is already initialised, and installs the process abort
// handler (die() then ends all ranks with MPI_Abort, its message prefixed with the rank when
// there are several). Once per process.
comm *comm_mpi_init(int *argc, char ***argv);
// Largest number of bytes one MPI message carries; larger peer messages go as several. The
// default is 1 GiB; tests set a tiny value to exercise the split without gigabytes of memory.
// Must be the same on every rank. Also read from LLAMOE_MPI_CHUNK_BYTES at init.
void comm_mpi_set_chunk_bytes(comm *c, size_t bytes);

// 1 when c is the MPI communicator and the MPI library reads and writes device memory itself
// (Open MPI built with CUDA support, asked at run time); else 0.
int comm_mpi_cuda_aware(const comm *c);

// One process, size 1: every call is a copy or nothing. For tests and single-process tools.
comm *comm_self(void);

// Frees c if non-NULL (and finalises MPI when the MPI communicator started it).
static inline void comm_free(comm *c) { if (c) c->free(c); }

// ---------------------------------------------------------------------------- chunking
// How many messages of at most chunk bytes carry `bytes` (0 for 0 bytes), and the size of
// message i. Shared by the transports; exposed so tests can check it without big buffers.
static inline size_t comm_n_chunks(size_t bytes, size_t chunk) { return (bytes + chunk - 1) / chunk; }
static inline size_t comm_chunk_size(size_t bytes, size_t chunk, size_t i) {
    size_t off = i * chunk;
    return bytes - off < chunk ? bytes - off : chunk;
}
