// One libFuzzer program per target in targets.h: built with -DFUZZ_TARGET=\"name\" by the
// LLAMOE_FUZZ=ON configuration (tests/fuzz/run.sh).
#include "tests/fuzz/targets.h"

static void (*target_fn)(const uint8_t *, size_t);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!target_fn) {
        for (int i = 0; i < N_FUZZ_TARGETS; i++)
            if (!strcmp(FUZZ_TARGETS[i].name, FUZZ_TARGET)) target_fn = FUZZ_TARGETS[i].fn;
        if (!target_fn) die("fuzz target %s is not in targets.h", FUZZ_TARGET);
    }
    target_fn(data, size);
    return 0;
}
