// Under mpirun: each rank binds with the given mode (argv[1], default cores) and prints its
// binding line; rank order is not guaranteed, the shell test sorts.
#include "parallel/comm.h"
#include "parallel/topology.h"

int main(int argc, char **argv) {
    comm *c = comm_mpi_init(&argc, &argv);
    bind_mode mode = BIND_CORES;
    if (argc > 1 && bind_mode_parse(argv[1], &mode)) die("--bind %s: expected none or cores", argv[1]);
    rank_binding b;
    topology_bind_cpu(c->rank, c->size, c->local_rank, c->local_size, mode, &b);
    printf("%s threads=%d\n", b.desc, b.n_cores);
    fflush(stdout);
    c->barrier(c);
    comm_free(c);
    return 0;
}
