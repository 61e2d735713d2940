// Replays every input under tests/fuzz/regressions/<target>/ (each once made a fuzz target
// crash, hang or trip a sanitizer) and every seed under tests/fuzz/corpus/<target>/ through
// the fuzz targets' own bodies (tests/fuzz/targets.h), in the normal build: a regression
// shows up in plain ctest, and under the sanitizer build as a report.
#include <dirent.h>

#include "tests/fuzz/targets.h"

static int replay_dir(const fuzz_target *t, const char *src, const char *kind, int *files) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fuzz/%s/%s", src, kind, t->name);
    DIR *d = opendir(dir);
    if (!d) return 0;   // a target without regressions yet
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        llamoe_err err;
        size_t len;
        char *data = read_text_file(path, (size_t)64 << 20, &len, &err);
        if (!data) { fprintf(stderr, "%s\n", err.msg); closedir(d); return -1; }
        if (getenv("VERBOSE")) fprintf(stderr, "%s: %s (%zu bytes)\n", t->name, path, len);
        t->fn((const uint8_t *)data, len);
        free(data);
        (*files)++;
    }
    closedir(d);
    return 0;
}

int main(int argc, char **argv) {
    const char *src = argc > 1 ? argv[1] : LLAMOE_SOURCE_DIR;
    int total = 0, regressions = 0;
    for (int i = 0; i < N_FUZZ_TARGETS; i++) {
        int seeds = 0, regs = 0;
        if (replay_dir(&FUZZ_TARGETS[i], src, "corpus", &seeds) != 0 ||
            replay_dir(&FUZZ_TARGETS[i], src, "regressions", &regs) != 0) return 1;
        printf("%-12s %4d seeds, %3d regression inputs: ok\n", FUZZ_TARGETS[i].name, seeds, regs);
        if (seeds == 0) { printf("FAIL: no seed corpus for %s\n", FUZZ_TARGETS[i].name); return 1; }
        total += seeds + regs;
        regressions += regs;
    }
    printf("test_fuzz_regressions: %d inputs (%d regressions) replayed without a crash\n", total, regressions);
    return 0;
}
