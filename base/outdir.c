#define _GNU_SOURCE   // sync_file_range
#include "base/outdir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

// ---------------------------------------------------------------------------- flat directories
static char *join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

// Calls fn on every entry of dir but . and ..; 0 if fn returned 0 for all, -1 if dir cannot be
// read or fn failed somewhere (every entry is still visited). No allocation of ours: this runs
// in die(), also when allocation is what failed.
static int for_each_entry(const char *dir, int (*fn)(const char *path, void *ctx), void *ctx) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int rc = 0;
    struct dirent *e;
    char p[8192];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if ((size_t)snprintf(p, sizeof p, "%s/%s", dir, e->d_name) >= sizeof p || fn(p, ctx) != 0) rc = -1;
    }
    closedir(d);
    return rc;
}

static int is_regular(const char *path, void *ctx) {
    struct stat st;
    return lstat(path, &st) == 0 && S_ISREG(st.st_mode) ? 0 : -1;
}

static int unlink_regular(const char *path, void *ctx) { return is_regular(path, NULL) == 0 ? unlink(path) : -1; }

// Removes the regular files of dir, then dir; refuses (-1) where it holds anything else.
static int remove_flat_dir(const char *dir) {
    if (for_each_entry(dir, is_regular, NULL) != 0) return -1;
    return for_each_entry(dir, unlink_regular, NULL) == 0 ? rmdir(dir) : -1;
}

static int fsync_path(const char *path, int flags) {
    int fd = open(path, flags | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

static int fsync_file(const char *path, void *ctx) { return fsync_path(path, O_RDONLY); }

// ---------------------------------------------------------------------------- cleanup on failure
// Temporary directories not yet committed; die() and exit() remove them. Fixed slots, so the
// cleanup allocates nothing.
#define MAX_PENDING_DIRS 4
static char *pending[MAX_PENDING_DIRS];

static void remove_pending(void) {
    for (int i = 0; i < MAX_PENDING_DIRS; i++)
        if (pending[i]) {
            remove_flat_dir(pending[i]);
            pending[i] = NULL;
        }
}

static void pending_add(char *tmp) {
    static int registered;
    if (!registered) {
        on_die(remove_pending);
        atexit(remove_pending);
        registered = 1;
    }
    for (int i = 0; i < MAX_PENDING_DIRS; i++)
        if (!pending[i]) { pending[i] = tmp; return; }
    CHECK(!"more than MAX_PENDING_DIRS output directories at once");
}

static void pending_remove(const char *tmp) {
    for (int i = 0; i < MAX_PENDING_DIRS; i++)
        if (pending[i] == tmp) pending[i] = NULL;
}

static void out_dir_free(out_dir *d) {
    pending_remove(d->tmp);
    free(d->path);
    free(d->tmp);
    memset(d, 0, sizeof *d);
}

// ---------------------------------------------------------------------------- out_dir
int out_dir_open(out_dir *d, const char *path, int force, llamoe_err *err) {
    memset(d, 0, sizeof *d);
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;   // "out/" must not give "out/.tmp.PID"
    if (n == 0 || !strcmp(path, "/")) return fail(err, "'%s': not a directory name to write", path);
    char *target = xmalloc(n + 1);
    memcpy(target, path, n);
    target[n] = 0;
    struct stat st;
    int rc = 0;
    if (lstat(target, &st) == 0) {
        if (!force) rc = fail(err, "%s: already exists (use --force to replace it)", target);
        else if (!S_ISDIR(st.st_mode)) rc = fail(err, "%s: exists and is not a directory (--force replaces only a directory)", target);
        else if (for_each_entry(target, is_regular, NULL) != 0)
            rc = fail(err, "%s: holds more than files; --force replaces only a directory of files (remove it yourself)", target);
    }
    if (rc != 0) { free(target); return -1; }
    size_t tn = n + 32;
    char *tmp = xmalloc(tn);
    snprintf(tmp, tn, "%s.tmp.%ld", target, (long)getpid());
    if (mkdir(tmp, 0755) != 0) {
        rc = fail(err, "%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        free(target);
        return rc;
    }
    *d = (out_dir){.path = target, .tmp = tmp, .force = force};
    pending_add(tmp);
    return 0;
}

char *out_dir_file(const out_dir *d, const char *name) { return join(d->tmp, name); }

int out_dir_write(const out_dir *d, const char *name, const void *data, size_t len, llamoe_err *err) {
    char *path = join(d->tmp, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644), rc = 0;
    if (fd < 0) rc = fail(err, "%s: cannot create: %s", path, strerror(errno));
    const char *p = data;
    while (rc == 0 && len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) rc = fail(err, "%s: write failed: %s", path, strerror(errno));
        else p += w, len -= (size_t)w;
    }
    if (rc == 0 && fsync(fd) != 0) rc = fail(err, "%s: write failed: %s", path, strerror(errno));
    if (fd >= 0 && close(fd) != 0 && rc == 0) rc = fail(err, "%s: write failed: %s", path, strerror(errno));
    free(path);
    return rc;
}

void out_dir_discard(out_dir *d) {
    if (!d->tmp) return;
    remove_flat_dir(d->tmp);
    out_dir_free(d);
}

int out_dir_commit(out_dir *d, llamoe_err *err) {
    // Data first, then the names: a crash after the rename finds every file whole.
    if (for_each_entry(d->tmp, fsync_file, NULL) != 0 || fsync_path(d->tmp, O_RDONLY | O_DIRECTORY) != 0) {
        fail(err, "%s: cannot fsync its files: %s", d->tmp, strerror(errno));
        out_dir_discard(d);
        return -1;
    }
    char *old = NULL;
    int rc = 0;
    struct stat st;
    if (lstat(d->path, &st) == 0) {   // may have appeared since out_dir_open
        if (!d->force) rc = fail(err, "%s: already exists (use --force to replace it)", d->path);
        else {
            size_t n = strlen(d->path) + 32;
            old = xmalloc(n);
            snprintf(old, n, "%s.old.%ld", d->path, (long)getpid());
            if (rename(d->path, old) != 0) rc = fail(err, "%s: cannot move it aside to %s: %s", d->path, old, strerror(errno));
        }
    }
    if (rc == 0 && rename(d->tmp, d->path) != 0) {
        rc = fail(err, "%s: cannot rename %s into place: %s", d->path, d->tmp, strerror(errno));
        if (old) rename(old, d->path);
    }
    if (rc != 0) {
        free(old);
        out_dir_discard(d);
        return -1;
    }
    pending_remove(d->tmp);
    char *parent = xstrdup(d->path), *slash = strrchr(parent, '/');
    if (!slash) strcpy(parent, ".");
    else if (slash == parent) parent[1] = 0;
    else *slash = 0;
    fsync_path(parent, O_RDONLY | O_DIRECTORY);   // makes the rename durable; not worth failing for
    free(parent);
    if (old && remove_flat_dir(old) != 0)
        fprintf(stderr, "llamoe: warning: %s is in place; the directory it replaced is left at %s\n", d->path, old);
    free(old);
    out_dir_free(d);
    return 0;
}

// ---------------------------------------------------------------------------- write-behind
void write_behind_init(write_behind *wb, int fd) {
    off_t at = lseek(fd, 0, SEEK_CUR);
    *wb = (write_behind){.fd = fd, .written = at > 0 ? at : 0, .started = at > 0 ? at : 0};
}

void write_behind_add(write_behind *wb, size_t bytes) {
    wb->written += (int64_t)bytes;
    // Failures here only lose the speed-up (a file system without the calls): ignored.
    while (wb->written - wb->started >= WRITE_BEHIND_WINDOW) {
        sync_file_range(wb->fd, wb->started, WRITE_BEHIND_WINDOW, SYNC_FILE_RANGE_WRITE);
        int64_t prev = wb->started - WRITE_BEHIND_WINDOW;
        if (prev >= 0) {
            sync_file_range(wb->fd, prev, WRITE_BEHIND_WINDOW,
                            SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
            posix_fadvise(wb->fd, prev, WRITE_BEHIND_WINDOW, POSIX_FADV_DONTNEED);
        }
        wb->started += WRITE_BEHIND_WINDOW;
    }
}
