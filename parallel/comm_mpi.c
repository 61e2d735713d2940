// The MPI communicator (host buffers; device buffers through comm_device_new). Collectives go over a duplicate of MPI_COMM_WORLD whose
// error handler returns, so that mpiCheck can name the failing call, file and line before
// die() ends every rank through MPI_Abort.
#include "parallel/comm.h"
#include "base/common.h"

#include <limits.h>
#include <mpi.h>
#include <string.h>
#include <time.h>
#if defined(OPEN_MPI) && OPEN_MPI
#include <mpi-ext.h>   // MPIX_CUDA_AWARE_SUPPORT, MPIX_Query_cuda_support
#endif

// ---------------------------------------------------------------------------- errors
#define mpiCheck(call) mpi_check((call), #call, __FILE__, __LINE__)
static void mpi_check(int rc, const char *call, const char *file, int line) {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "MPI error %d", rc);
    die("%s:%d: %s failed: %s", file, line, call, msg);
}

// die() lands here once MPI is up: one rank's failure ends the job instead of leaving the
// others blocked in a collective. MPI_Abort should not return; exit() covers it if it does.
static _Noreturn void mpi_abort_handler(int code) {
    MPI_Abort(MPI_COMM_WORLD, code);
    exit(code);
}

// ---------------------------------------------------------------------------- state
#define A2A_TAG 7301   // every chunk of every peer message uses it: MPI keeps order per (peer, tag)

typedef struct {
    MPI_Comm comm;          // our duplicate of MPI_COMM_WORLD
    int started_mpi;        // comm_mpi_init called MPI_Init: free() finalises
    size_t chunk;           // bytes per MPI message, 1 .. INT_MAX
    MPI_Request *req;       // grown as needed, reused across calls
    MPI_Status *status;
    size_t req_cap;
} mpi_impl;

static void reserve_requests(mpi_impl *m, size_t n) {
    if (n <= m->req_cap) return;
    free(m->req);
    free(m->status);
    m->req = xmalloc(n * sizeof *m->req);
    m->status = xmalloc(n * sizeof *m->status);
    m->req_cap = n;
}

static void require_host(const comm *c) {
    // The staging through pinned host memory comes with the CUDA build; until then a device
    // buffer here is a programming error, not a runtime condition.
    if (c->mem != COMM_MEM_HOST) die("comm mpi: device buffers need the CUDA build (host staging)");
}

// ---------------------------------------------------------------------------- all-to-all-v
// MPI_Alltoallv takes int counts and int displacements (in units of the datatype), so neither a
// peer message above 2 GiB nor a buffer whose peer offsets pass 2 GiB fits it. We use what Open
// MPI's basic alltoallv does anyway for a few ranks - nonblocking point-to-point, all receives
// posted first - and split each peer message into chunks of at most m->chunk bytes. Offsets
// are then plain pointer arithmetic (size_t), and MPI's non-overtaking rule for one (source,
// tag, communicator) keeps the chunks in order. The own share is a memcpy.
static int mpi_alltoallv(comm *c, const void *send, const size_t *send_bytes, const size_t *send_displ,
                         void *recv, const size_t *recv_bytes, const size_t *recv_displ) {
    mpi_impl *m = c->impl;
    require_host(c);
    size_t n_req = 0;
    for (int p = 0; p < c->size; p++) {
        if (p == c->rank) continue;
        n_req += comm_n_chunks(send_bytes[p], m->chunk) + comm_n_chunks(recv_bytes[p], m->chunk);
    }
    CHECK(n_req <= (size_t)INT_MAX);   // MPI_Waitall's count; only a tiny test chunk size gets near
    reserve_requests(m, n_req);

    size_t r = 0;
    for (int i = 1; i < c->size; i++) {              // receives first, so no send waits on a post
        int p = (c->rank - i + c->size) % c->size;
        for (size_t j = 0, nc = comm_n_chunks(recv_bytes[p], m->chunk); j < nc; j++)
            mpiCheck(MPI_Irecv((char *)recv + recv_displ[p] + j * m->chunk,
                               (int)comm_chunk_size(recv_bytes[p], m->chunk, j), MPI_BYTE, p,
                               A2A_TAG, m->comm, &m->req[r++]));
    }
    for (int i = 1; i < c->size; i++) {              // rotate peers so not everyone hits rank 0 first
        int p = (c->rank + i) % c->size;
        for (size_t j = 0, nc = comm_n_chunks(send_bytes[p], m->chunk); j < nc; j++)
            mpiCheck(MPI_Isend((const char *)send + send_displ[p] + j * m->chunk,
                               (int)comm_chunk_size(send_bytes[p], m->chunk, j), MPI_BYTE, p,
                               A2A_TAG, m->comm, &m->req[r++]));
    }
    if (send_bytes[c->rank] != recv_bytes[c->rank])
        die("comm mpi: alltoallv: rank %d sends itself %zu bytes but expects %zu",
            c->rank, send_bytes[c->rank], recv_bytes[c->rank]);
    if (send_bytes[c->rank])
        memcpy((char *)recv + recv_displ[c->rank], (const char *)send + send_displ[c->rank], send_bytes[c->rank]);
    mpiCheck(MPI_Waitall((int)r, m->req, m->status));

    // A peer that sends less than we expect would leave the tail of our buffer stale without
    // any MPI error (a receive may be longer than its message): check every chunk's length.
    r = 0;
    for (int i = 1; i < c->size; i++) {
        int p = (c->rank - i + c->size) % c->size;
        for (size_t j = 0, nc = comm_n_chunks(recv_bytes[p], m->chunk); j < nc; j++, r++) {
            int got = 0;
            mpiCheck(MPI_Get_count(&m->status[r], MPI_BYTE, &got));
            if ((size_t)got != comm_chunk_size(recv_bytes[p], m->chunk, j))
                die("comm mpi: alltoallv: chunk %zu from rank %d has %d bytes, expected %zu",
                    j, p, got, comm_chunk_size(recv_bytes[p], m->chunk, j));
        }
    }
    return 0;
}

// ---------------------------------------------------------------------------- small collectives
static int mpi_exchange_counts(comm *c, const int64_t *send, int64_t *recv, int n) {
    mpi_impl *m = c->impl;
    mpiCheck(MPI_Alltoall(send, n, MPI_INT64_T, recv, n, MPI_INT64_T, m->comm));
    return 0;
}

static int mpi_allreduce_sum_i64(comm *c, int64_t *vals, int n) {
    mpi_impl *m = c->impl;
    mpiCheck(MPI_Allreduce(MPI_IN_PLACE, vals, n, MPI_INT64_T, MPI_SUM, m->comm));
    return 0;
}

static int mpi_allreduce_max_f64(comm *c, double *vals, int n) {
    mpi_impl *m = c->impl;
    mpiCheck(MPI_Allreduce(MPI_IN_PLACE, vals, n, MPI_DOUBLE, MPI_MAX, m->comm));
    return 0;
}

static int mpi_bcast(comm *c, void *buf, size_t bytes, int root) {
    mpi_impl *m = c->impl;
    require_host(c);
    for (size_t j = 0, nc = comm_n_chunks(bytes, m->chunk); j < nc; j++)   // int counts: chunked too
        mpiCheck(MPI_Bcast((char *)buf + j * m->chunk, (int)comm_chunk_size(bytes, m->chunk, j),
                           MPI_BYTE, root, m->comm));
    return 0;
}

// A waiting MPI_Bcast polls at full speed (Open MPI spins), right inside a step but wasteful
// for a server that waits minutes for its next request. This one starts an MPI_Ibcast and
// tests it with sleeps growing from 50 us to 2 ms: an idle rank costs next to no CPU, and the
// next step starts at most about 2 ms late.
static int mpi_bcast_idle(comm *c, void *buf, size_t bytes, int root) {
    mpi_impl *m = c->impl;
    require_host(c);
    CHECK(bytes <= m->chunk);   // one message (the header of a step plan: a few bytes)
    MPI_Request req;
    mpiCheck(MPI_Ibcast(buf, (int)bytes, MPI_BYTE, root, m->comm, &req));
    for (long sleep_ns = 50000;; sleep_ns = sleep_ns < 2000000 ? 2 * sleep_ns : sleep_ns) {
        int done = 0;
        mpiCheck(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
        if (done) return 0;
        struct timespec ts = {0, sleep_ns};
        nanosleep(&ts, NULL);
    }
}

static int mpi_barrier(comm *c) {
    mpi_impl *m = c->impl;
    mpiCheck(MPI_Barrier(m->comm));
    return 0;
}

static _Noreturn void mpi_abort(comm *c, int code) {
    (void)c;
    mpi_abort_handler(code);
}

static void mpi_free(comm *c) {
    mpi_impl *m = c->impl;
    mpiCheck(MPI_Comm_free(&m->comm));
    if (m->started_mpi) {
        set_abort_handler(NULL);      // after MPI_Finalize, die() just exits
        mpiCheck(MPI_Finalize());
    }
    free(m->req);
    free(m->status);
    free(m);
    free(c);
}

// ---------------------------------------------------------------------------- setup
void comm_mpi_set_chunk_bytes(comm *c, size_t bytes) {
    mpi_impl *m = c->impl;
    m->chunk = bytes < 1 ? 1 : bytes > (size_t)INT_MAX ? (size_t)INT_MAX : bytes;
}

comm *comm_mpi_init(int *argc, char ***argv) {
    int initialised = 0;
    mpiCheck(MPI_Initialized(&initialised));
    if (!initialised) {
        int provided = 0;   // only the thread that called init talks MPI; OpenMP threads compute
        mpiCheck(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
    }

    comm *c = xcalloc(1, sizeof *c);
    mpi_impl *m = xcalloc(1, sizeof *m);
    m->started_mpi = !initialised;
    m->chunk = (size_t)1 << 30;
    mpiCheck(MPI_Comm_dup(MPI_COMM_WORLD, &m->comm));
    mpiCheck(MPI_Comm_set_errhandler(m->comm, MPI_ERRORS_RETURN));

    c->name = "mpi";
    c->impl = m;
    c->mem = COMM_MEM_HOST;
    mpiCheck(MPI_Comm_rank(m->comm, &c->rank));
    mpiCheck(MPI_Comm_size(m->comm, &c->size));
    MPI_Comm node;
    mpiCheck(MPI_Comm_split_type(m->comm, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &node));
    mpiCheck(MPI_Comm_rank(node, &c->local_rank));
    mpiCheck(MPI_Comm_size(node, &c->local_size));
    mpiCheck(MPI_Comm_free(&node));
    // One process needs no MPI_Abort: die() exits plainly, with one line and no MPI banner.
    if (c->size > 1) {
        set_abort_handler(mpi_abort_handler);
        char prefix[32];
        snprintf(prefix, sizeof prefix, "rank %d: ", c->rank);
        set_error_prefix(prefix);
    }
    const char *env = getenv("LLAMOE_MPI_CHUNK_BYTES");
    if (env && *env) {
        char *end = NULL;
        unsigned long long v = strtoull(env, &end, 10);
        if (*end || v == 0) die("LLAMOE_MPI_CHUNK_BYTES=%s: expected a positive number of bytes", env);
        comm_mpi_set_chunk_bytes(c, (size_t)v);
    }

    c->alltoallv = mpi_alltoallv;
    c->exchange_counts = mpi_exchange_counts;
    c->allreduce_sum_i64 = mpi_allreduce_sum_i64;
    c->allreduce_max_f64 = mpi_allreduce_max_f64;
    c->bcast = mpi_bcast;
    c->bcast_idle = mpi_bcast_idle;
    c->barrier = mpi_barrier;
    c->abort = mpi_abort;
    c->free = mpi_free;
    return c;
}

int comm_mpi_cuda_aware(const comm *c) {
    if (strcmp(c->name, "mpi") != 0) return 0;
#if defined(MPIX_CUDA_AWARE_SUPPORT) && MPIX_CUDA_AWARE_SUPPORT
    return MPIX_Query_cuda_support() == 1;
#else
    return 0;
#endif
}
