// hwloc binding of ranks to cores (and to the cores near their GPU).
#include "parallel/topology.h"

#include <errno.h>
#include <hwloc.h>
#include <string.h>

int bind_mode_parse(const char *s, bind_mode *out) {
    if (!strcmp(s, "none")) *out = BIND_NONE;
    else if (!strcmp(s, "cores")) *out = BIND_CORES;
    else return -1;
    return 0;
}

int topology_share(int local_rank, int local_size, int n_cores, int *first, int *count) {
    if (local_size <= n_cores) {
        *first = (int)((int64_t)local_rank * n_cores / local_size);
        *count = (int)((int64_t)(local_rank + 1) * n_cores / local_size) - *first;
        return 0;
    }
    *first = (int)((int64_t)local_rank * n_cores / local_size);
    *count = 1;
    return 1;
}

int topology_gpu_for_local_rank(int local_rank, int n_gpus) { return n_gpus > 0 ? local_rank % n_gpus : -1; }

// ---------------------------------------------------------------------------- helpers
static void warn_once(int rank, const char *fmt, const char *what) {
    static int warned = 0;
    if (warned) return;
    warned = 1;
    fprintf(stderr, "llamoe: rank %d: warning: ", rank);
    fprintf(stderr, fmt, what);
    fputc('\n', stderr);
}

static hwloc_obj_type_t core_type(hwloc_topology_t topo) {   // some VMs report PUs only
    return hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE) > 0 ? HWLOC_OBJ_CORE : HWLOC_OBJ_PU;
}

static void describe(rank_binding *out, int rank, int size, int local_rank, int local_size, const char *what) {
    snprintf(out->desc, sizeof out->desc, "rank %d/%d (local %d/%d): %s", rank, size, local_rank, local_size, what);
}

// Binds to cores[first .. first+count) of the given list (logical core objects); fills out.
static void bind_cores(hwloc_topology_t topo, hwloc_obj_t *cores, int n_cores, int first, int count,
                       int oversubscribed, int sharers, int rank, int size, int local_rank, int local_size,
                       const char *near, rank_binding *out) {
    hwloc_bitmap_t set = hwloc_bitmap_alloc();
    for (int i = first; i < first + count; i++) hwloc_bitmap_or(set, set, cores[i]->cpuset);
    out->n_cores = count;
    out->first_core = (int)cores[first]->logical_index;
    out->oversubscribed = oversubscribed;
    out->bound = hwloc_set_cpubind(topo, set, HWLOC_CPUBIND_PROCESS) == 0;
    char cpus[64], cores_txt[32], what[160];
    hwloc_bitmap_list_snprintf(cpus, sizeof cpus, set);
    if (count == 1) snprintf(cores_txt, sizeof cores_txt, "%u", cores[first]->logical_index);
    else snprintf(cores_txt, sizeof cores_txt, "%u-%u", cores[first]->logical_index, cores[first + count - 1]->logical_index);
    snprintf(what, sizeof what, "%s%s %s (cpus %s)%s", near, count == 1 ? "core" : "cores", cores_txt, cpus,
             out->bound ? "" : " [not bound]");
    if (!out->bound) warn_once(rank, "could not bind to cores: %s; running unbound", strerror(errno));
    describe(out, rank, size, local_rank, local_size, what);
    if (oversubscribed) {
        size_t len = strlen(out->desc);
        snprintf(out->desc + len, sizeof out->desc - len, " [oversubscribed: %d ranks on %d cores]", sharers, n_cores);
    }
    hwloc_bitmap_free(set);
}

static int load_topology(hwloc_topology_t *topo, int with_io, int rank) {
    if (hwloc_topology_init(topo)) { warn_once(rank, "%s", "hwloc_topology_init failed; running unbound"); return -1; }
    if (with_io) hwloc_topology_set_io_types_filter(*topo, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
    if (hwloc_topology_load(*topo)) {
        warn_once(rank, "%s", "hwloc_topology_load failed; running unbound");
        hwloc_topology_destroy(*topo);
        return -1;
    }
    return 0;
}

static void not_bound(rank_binding *out, int rank, int size, int local_rank, int local_size, const char *why) {
    memset(out, 0, sizeof *out);
    out->first_core = -1;
    out->gpu = -1;
    describe(out, rank, size, local_rank, local_size, why);
}

// ---------------------------------------------------------------------------- cpu
int topology_bind_cpu(int rank, int size, int local_rank, int local_size, bind_mode mode, rank_binding *out) {
    not_bound(out, rank, size, local_rank, local_size, "not bound (--bind none)");
    if (mode == BIND_NONE) return 0;
    hwloc_topology_t topo;
    if (load_topology(&topo, 0, rank)) {
        describe(out, rank, size, local_rank, local_size, "not bound (hwloc failed)");
        return 0;
    }
    hwloc_obj_type_t type = core_type(topo);
    int n = hwloc_get_nbobjs_by_type(topo, type);
    hwloc_obj_t *cores = xmalloc((size_t)(n > 0 ? n : 1) * sizeof *cores);
    for (int i = 0; i < n; i++) cores[i] = hwloc_get_obj_by_type(topo, type, i);
    if (n > 0) {
        int first, count;
        int over = topology_share(local_rank, local_size, n, &first, &count);
        bind_cores(topo, cores, n, first, count, over, local_size, rank, size, local_rank, local_size, "", out);
    } else {
        warn_once(rank, "%s", "hwloc sees no cores; running unbound");
    }
    free(cores);
    hwloc_topology_destroy(topo);
    return 0;
}

// ---------------------------------------------------------------------------- gpu
int topology_bind_gpu(int rank, int size, int local_rank, int local_size,
                      const char *const *gpu_pci_bus_ids, int n_gpus, bind_mode mode, rank_binding *out) {
    int gpu = topology_gpu_for_local_rank(local_rank, n_gpus);
    if (gpu < 0) return topology_bind_cpu(rank, size, local_rank, local_size, mode, out);
    not_bound(out, rank, size, local_rank, local_size, "");
    if (mode == BIND_NONE) {
        char what[96];
        snprintf(what, sizeof what, "GPU %d (%s), not bound (--bind none)", gpu, gpu_pci_bus_ids[gpu]);
        describe(out, rank, size, local_rank, local_size, what);
        out->gpu = gpu;
        return 0;
    }
    hwloc_topology_t topo;
    if (load_topology(&topo, 1, rank)) {
        describe(out, rank, size, local_rank, local_size, "not bound (hwloc failed)");
        out->gpu = gpu;
        return 0;
    }
    // Each local rank's GPU's nearby cpuset; the ranks with the same one split its cores.
    hwloc_const_cpuset_t mine = NULL;
    hwloc_const_cpuset_t *near = xcalloc((size_t)local_size, sizeof *near);
    for (int r = 0; r < local_size; r++) {
        hwloc_obj_t dev = hwloc_get_pcidev_by_busidstring(topo, gpu_pci_bus_ids[topology_gpu_for_local_rank(r, n_gpus)]);
        hwloc_obj_t anc = dev ? hwloc_get_non_io_ancestor_obj(topo, dev) : NULL;
        near[r] = anc ? anc->cpuset : NULL;
    }
    mine = near[local_rank];
    if (!mine) {
        warn_once(rank, "hwloc does not see GPU %s; binding as for CPU ranks", gpu_pci_bus_ids[gpu]);
        free(near);
        hwloc_topology_destroy(topo);
        topology_bind_cpu(rank, size, local_rank, local_size, mode, out);
        out->gpu = gpu;
        return 0;
    }
    int index = 0, sharers = 0;
    for (int r = 0; r < local_size; r++)
        if (near[r] && hwloc_bitmap_isequal(near[r], mine)) {
            if (r < local_rank) index++;
            sharers++;
        }
    hwloc_obj_type_t type = core_type(topo);
    int n_all = hwloc_get_nbobjs_by_type(topo, type), n = 0;
    hwloc_obj_t *cores = xmalloc((size_t)(n_all > 0 ? n_all : 1) * sizeof *cores);
    for (int i = 0; i < n_all; i++) {
        hwloc_obj_t core = hwloc_get_obj_by_type(topo, type, i);
        if (hwloc_bitmap_isincluded(core->cpuset, mine)) cores[n++] = core;
    }
    if (n > 0) {
        int first, count;
        int over = topology_share(index, sharers, n, &first, &count);
        char near_txt[64];
        snprintf(near_txt, sizeof near_txt, "GPU %d (%s), near ", gpu, gpu_pci_bus_ids[gpu]);
        bind_cores(topo, cores, n, first, count, over, sharers, rank, size, local_rank, local_size, near_txt, out);
    } else {
        warn_once(rank, "no cores near GPU %s; running unbound", gpu_pci_bus_ids[gpu]);
    }
    out->gpu = gpu;
    free(cores);
    free(near);
    hwloc_topology_destroy(topo);
    return 0;
}
