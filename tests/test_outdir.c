// base/outdir: a directory appears whole under its name or not at all; an existing one is
// refused without force, replaced with it, and never when it holds more than files.
// (die() removing the temporary is checked end to end by test_writers.sh.) Usage: test_outdir
#include "base/outdir.h"

#include <dirent.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int passed, failed;

#define EXPECT(cond, ...) do { \
    if (cond) passed++; \
    else { failed++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } \
} while (0)

static char root[256];

static char *at(const char *rel) {
    static char buf[4][512];
    static int k;
    char *p = buf[k++ % 4];
    snprintf(p, 512, "%s/%s", root, rel);
    return p;
}

static int entries(const char *dir) {   // -1 if dir is missing
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return n;
}

static int file_is(const char *path, const char *text) {
    llamoe_err err;
    size_t len;
    char *got = read_text_file(path, 1 << 20, &len, &err);
    int same = got && len == strlen(text) && !memcmp(got, text, len);
    free(got);
    return same;
}

int main(void) {
    snprintf(root, sizeof root, "/tmp/test_outdir.%ld", (long)getpid());
    CHECK(mkdir(root, 0755) == 0);
    llamoe_err err;
    out_dir d;

    // Written, committed: only the target is there, with its files.
    EXPECT(out_dir_open(&d, at("m"), 0, &err) == 0, "open: %s", err.msg);
    EXPECT(entries(at("m")) == -1 && entries(d.tmp) == 0, "before commit the target does not exist");
    EXPECT(out_dir_write(&d, "a.json", "{}\n", 3, &err) == 0, "write: %s", err.msg);
    EXPECT(out_dir_write(&d, "a.json", "{}\n", 3, &err) == -1 && strstr(err.msg, "a.json: cannot create"), "twice: %s", err.msg);
    char *f = out_dir_file(&d, "b.bin");
    FILE *fp = fopen(f, "wb");
    EXPECT(fp && fputs("bytes", fp) >= 0 && fclose(fp) == 0, "a file written by the caller");
    free(f);
    EXPECT(out_dir_commit(&d, &err) == 0, "commit: %s", err.msg);
    EXPECT(file_is(at("m/a.json"), "{}\n") && file_is(at("m/b.bin"), "bytes") && entries(root) == 1,
           "committed: %d entries in the root", entries(root));

    // An existing target: refused without force (before any work), replaced with it.
    EXPECT(out_dir_open(&d, at("m"), 0, &err) == -1 && strstr(err.msg, "m: already exists (use --force to replace it)"), "%s", err.msg);
    EXPECT(entries(root) == 1, "a refused open creates nothing");
    EXPECT(out_dir_open(&d, at("m/"), 1, &err) == 0, "force: %s", err.msg);   // trailing slash: the same directory
    EXPECT(!strcmp(d.path, at("m")), "trailing slash kept: %s", d.path);
    EXPECT(out_dir_write(&d, "c.json", "new", 3, &err) == 0, "write: %s", err.msg);
    EXPECT(out_dir_commit(&d, &err) == 0, "commit with force: %s", err.msg);
    EXPECT(entries(at("m")) == 1 && file_is(at("m/c.json"), "new") && entries(root) == 1, "replaced, nothing else left");

    // A target that appears between open and commit is not overwritten without force.
    EXPECT(out_dir_open(&d, at("late"), 0, &err) == 0, "%s", err.msg);
    CHECK(mkdir(at("late"), 0755) == 0);
    EXPECT(out_dir_commit(&d, &err) == -1 && strstr(err.msg, "already exists"), "%s", err.msg);
    EXPECT(entries(at("late")) == 0 && entries(root) == 2, "the temporary is gone, the other directory kept");

    // --force never takes a tree or a file with it.
    CHECK(mkdir(at("tree"), 0755) == 0 && mkdir(at("tree/sub"), 0755) == 0);
    EXPECT(out_dir_open(&d, at("tree"), 1, &err) == -1 && strstr(err.msg, "holds more than files"), "%s", err.msg);
    fp = fopen(at("plain"), "w");
    CHECK(fp && fclose(fp) == 0);
    EXPECT(out_dir_open(&d, at("plain"), 1, &err) == -1 && strstr(err.msg, "is not a directory"), "%s", err.msg);
    EXPECT(out_dir_open(&d, "", 0, &err) == -1, "empty path");

    // Discarded: nothing left.
    EXPECT(out_dir_open(&d, at("gone"), 0, &err) == 0, "%s", err.msg);
    EXPECT(out_dir_write(&d, "x", "1", 1, &err) == 0, "%s", err.msg);
    out_dir_discard(&d);
    EXPECT(entries(root) == 4, "discard leaves nothing: %d entries", entries(root));

    // Cleanup of what the test made.
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0) printf("could not remove %s\n", root);
    printf("test_outdir: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
