// An output directory (a model: config files, safetensors files, index) that appears
// complete under its name or not at all, as out_file (base/common.h) does for one file.
// Files are written into PATH.tmp.PID; out_dir_commit fsyncs each of them and the directory
// and renames it to PATH. Before that, die() and exit() remove the temporary directory (a
// SIGKILL can leave PATH.tmp.PID, never a half PATH).
// These directories are flat: removal deletes regular files and the directory, nothing
// else, so --force can never take a tree with it.
#pragma once
#include "base/common.h"

typedef struct {
    char *path;   // the target, without trailing slashes
    char *tmp;    // PATH.tmp.PID, where the files go
    int force;    // replace an existing PATH on commit
} out_dir;

// Creates the temporary directory. An existing PATH is an error unless force, and with force
// it must be a directory holding only regular files (the one it replaces).
int out_dir_open(out_dir *d, const char *path, int force, llamoe_err *err);
// TMP/name, where a file of the directory is written (malloc'd; free it).
char *out_dir_file(const out_dir *d, const char *name);
// Writes a whole (small) file into the directory and fsyncs it.
int out_dir_write(const out_dir *d, const char *name, const void *data, size_t len, llamoe_err *err);
// fsyncs every file and the directory, renames it to PATH (with force, an old PATH is moved
// aside first and removed after), fsyncs PATH's parent. On failure the temporary directory
// is removed and an old PATH is back in place. Frees d either way.
int out_dir_commit(out_dir *d, llamoe_err *err);
// Removes the temporary directory and its files; frees d.
void out_dir_discard(out_dir *d);

// Write-behind for a large file written sequentially through fd: each time another
// WRITE_BEHIND_WINDOW bytes are written, the kernel starts writing them out, and the window
// before is waited for and dropped from the page cache. The file streams to the disk at the
// disk's pace instead of piling up gigabytes of dirty pages until fsync: far less kernel
// time (no reclaim of dirty memory), and memory stays free for whatever runs beside. The
// final fsync is still the caller's; errors surface there.
#define WRITE_BEHIND_WINDOW ((int64_t)64 << 20)
typedef struct {
    int fd;
    int64_t written, started;   // file offsets: written so far, writeback started up to
} write_behind;
void write_behind_init(write_behind *wb, int fd);   // from fd's current offset
void write_behind_add(write_behind *wb, size_t bytes);   // after writing bytes more
