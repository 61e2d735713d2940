// Core shares for (local rank, local ranks, cores) from a table, and binding this process:
// to all its cores, not at all (--bind none), and near a PCI device standing in for a GPU.
#include "parallel/topology.h"

#include <dirent.h>
#include <string.h>

static int failures = 0;
#define EXPECT(cond) do { if (!(cond)) { fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond); failures++; } } while (0)

typedef struct { int r, L, C, first, count, over; } share_case;
static const share_case shares[] = {
    {0, 1, 2, 0, 2, 0}, {0, 2, 2, 0, 1, 0}, {1, 2, 2, 1, 1, 0},
    {0, 3, 8, 0, 2, 0}, {1, 3, 8, 2, 3, 0}, {2, 3, 8, 5, 3, 0},    // 8 cores over 3: 2, 3, 3
    {0, 3, 2, 0, 1, 1}, {1, 3, 2, 0, 1, 1}, {2, 3, 2, 1, 1, 1},    // 3 ranks on 2 cores
    {3, 4, 1, 0, 1, 1}, {7, 8, 64, 56, 8, 0},
};

int main(void) {
    for (size_t i = 0; i < sizeof shares / sizeof shares[0]; i++) {
        const share_case *s = &shares[i];
        int first = -1, count = -1, over = topology_share(s->r, s->L, s->C, &first, &count);
        if (first != s->first || count != s->count || over != s->over) {
            fprintf(stderr, "share(%d of %d over %d cores) = first %d count %d over %d, expected %d %d %d\n",
                    s->r, s->L, s->C, first, count, over, s->first, s->count, s->over);
            failures++;
        }
    }
    // Shares tile the cores exactly when L <= C.
    for (int C = 1; C <= 16; C++)
        for (int L = 1; L <= C; L++) {
            int next = 0;
            for (int r = 0; r < L; r++) {
                int first, count;
                topology_share(r, L, C, &first, &count);
                EXPECT(first == next && count >= 1);
                next = first + count;
            }
            EXPECT(next == C);
        }

    bind_mode m;
    EXPECT(bind_mode_parse("none", &m) == 0 && m == BIND_NONE);
    EXPECT(bind_mode_parse("cores", &m) == 0 && m == BIND_CORES);
    EXPECT(bind_mode_parse("socket", &m) == -1);

    rank_binding b;
    topology_bind_cpu(0, 1, 0, 1, BIND_NONE, &b);
    EXPECT(b.n_cores == 0 && !b.bound && strstr(b.desc, "not bound (--bind none)"));
    printf("%s\n", b.desc);
    topology_bind_cpu(0, 1, 0, 1, BIND_CORES, &b);
    EXPECT(b.n_cores >= 1 && b.first_core == 0 && !b.oversubscribed && strstr(b.desc, "rank 0/1 (local 0/1): core"));
    printf("%s\n", b.desc);

    // GPU path without a GPU: any PCI device hwloc reports serves as one; an unknown bus id
    // falls back to the CPU rule.
    const char *missing[1] = {"0000:ff:1f.7"};
    topology_bind_gpu(0, 1, 0, 1, missing, 1, BIND_CORES, &b);
    EXPECT(b.gpu == 0 && b.n_cores >= 1);
    printf("%s\n", b.desc);
    // A network (class 02) or display (03) controller: kinds hwloc keeps as important I/O.
    DIR *dir = opendir("/sys/bus/pci/devices");
    struct dirent *de;
    char bus[300] = "";
    while (dir && (de = readdir(dir))) {
        char path[600], cls[16] = "";
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/class", de->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        if (fgets(cls, sizeof cls, f) && (!strncmp(cls, "0x02", 4) || !strncmp(cls, "0x03", 4)))
            snprintf(bus, sizeof bus, "%s", de->d_name);
        fclose(f);
        if (bus[0]) break;
    }
    if (dir) closedir(dir);
    if (bus[0]) {
        const char *ids[1] = {bus};
        topology_bind_gpu(0, 2, 1, 2, ids, 1, BIND_CORES, &b);   // two ranks share the one "GPU"
        EXPECT(b.gpu == 0 && b.n_cores >= 1);
        printf("%s\n", b.desc);   // "GPU 0 (bus), near core 1" where hwloc sees the device
    }
    if (failures) { fprintf(stderr, "test_topology: %d failures\n", failures); return 1; }
    printf("test_topology: ok\n");
    return 0;
}
