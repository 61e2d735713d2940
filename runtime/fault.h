// Fault injection, a test hook: LLAMOE_FAULT=RANK:WHAT[:STEP] makes one rank of llamoe-ep fail
// on purpose so that tests/test_failure_mpi.sh can check that the whole job ends, non-zero,
// naming the rank and the cause. Read once at start; unset (the normal case) it costs one
// integer compare per generation step. WHAT:
//   open   the rank cannot open its model directory (at load; STEP not allowed)
//   oom    an allocation fails on the rank: at load without STEP, else at that step
//   exit   the rank exits with status 3 at STEP without MPI_Finalize (a crash, as MPI sees it)
//   kill   the rank sends itself SIGKILL at STEP (the kernel's OOM killer, kill -9)
//   stall  the rank sleeps 60 s at STEP (a hung rank; lets a test kill -9 ranks from outside)
// STEP counts generate()'s forward steps from 0.
#pragma once
#include "base/common.h"

typedef enum { FAULT_NONE, FAULT_OPEN, FAULT_OOM, FAULT_EXIT, FAULT_KILL, FAULT_STALL } fault_kind;
typedef struct {
    int rank;
    fault_kind what;
    int step;       // -1: at load
} fault_spec;

int fault_parse(const char *s, fault_spec *f, llamoe_err *err);
// Reads LLAMOE_FAULT (die()s on a malformed value or a rank outside [0, n_ranks)).
void fault_init(int rank, int n_ranks);
// At load: 1 if this rank is to fail opening its model directory, after making any
// load-time oom fault happen.
int fault_at_load(void);
// generate() calls this at the start of each step (all ranks).
void fault_step(int step);
