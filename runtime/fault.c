// LLAMOE_FAULT (see fault.h). Each injected fault announces itself on stderr first, so that a
// variable left set by mistake explains the failure it causes.
#include "runtime/fault.h"

#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static fault_spec active = {.rank = -1, .what = FAULT_NONE, .step = -1};
static int my_rank = -1;

int fault_parse(const char *s, fault_spec *f, llamoe_err *err) {
    static const struct { const char *name; fault_kind kind; int step; } kinds[] = {
        // step: 0 not allowed, 1 optional, 2 required
        {"open", FAULT_OPEN, 0}, {"oom", FAULT_OOM, 1}, {"exit", FAULT_EXIT, 2},
        {"kill", FAULT_KILL, 2}, {"stall", FAULT_STALL, 2},
    };
    char what[16];
    int rank, step = -1, used = 0;
    int n = sscanf(s, "%d:%15[a-z]%n:%d%n", &rank, what, &used, &step, &used);
    if (n < 2 || s[used] != 0 || rank < 0 || (n == 3 && step < 0))
        return fail(err, "LLAMOE_FAULT=%s: expected RANK:WHAT[:STEP] (WHAT open, oom, exit, kill or stall)", s);
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        if (strcmp(what, kinds[i].name)) continue;
        if (n == 3 && kinds[i].step == 0) return fail(err, "LLAMOE_FAULT=%s: %s takes no step", s, what);
        if (n == 2 && kinds[i].step == 2) return fail(err, "LLAMOE_FAULT=%s: %s needs a step", s, what);
        *f = (fault_spec){rank, kinds[i].kind, n == 3 ? step : -1};
        return 0;
    }
    return fail(err, "LLAMOE_FAULT=%s: unknown fault %s (open, oom, exit, kill, stall)", s, what);
}

void fault_init(int rank, int n_ranks) {
    const char *s = getenv("LLAMOE_FAULT");
    my_rank = rank;
    if (!s || !*s) return;
    llamoe_err err;
    fault_spec f;
    if (fault_parse(s, &f, &err) != 0) die("%s", err.msg);
    if (f.rank >= n_ranks) die("LLAMOE_FAULT=%s: rank %d does not exist (%d ranks)", s, f.rank, n_ranks);
    active = f;
}

static void announce(const char *what) {
    fprintf(stderr, "llamoe: rank %d: LLAMOE_FAULT: injecting %s\n", my_rank, what);
    fflush(stderr);
}

// The real out-of-memory path: the next xmalloc fails as malloc would, and die()s naming it.
static _Noreturn void inject_oom(void) {
    announce("an allocation failure");
    fault_fail_allocations();
    free(xmalloc((size_t)64 << 20));
    die("LLAMOE_FAULT oom: the allocation did not fail");   // not reached
}

int fault_at_load(void) {
    if (active.rank != my_rank || active.step >= 0) return 0;
    if (active.what == FAULT_OOM) inject_oom();
    if (active.what == FAULT_OPEN) { announce("an unopenable model directory"); return 1; }
    return 0;
}

void fault_step(int step) {
    if (active.rank != my_rank || active.step != step) return;
    switch (active.what) {
    case FAULT_OOM: inject_oom();
    case FAULT_EXIT:
        announce("an exit without MPI_Finalize");
        _exit(3);
    case FAULT_KILL:
        announce("SIGKILL");
        raise(SIGKILL);
        break;
    case FAULT_STALL: {
        announce("a 60 s stall");
        struct timespec ts = {60, 0};
        while (nanosleep(&ts, &ts) != 0) {}
        break;
    }
    default: break;
    }
}
