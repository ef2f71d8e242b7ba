/*
 * fileio.h — crash-safe file replacement and whole-file helpers.
 *
 * Every file booth writes that a user would miss (model folders, LoRA files,
 * checkpoints, images) goes through a temporary file in the same directory that is
 * flushed, fsynced and renamed over the target, and the directory is fsynced: a
 * killed writer leaves the old file (or none), never a partial one.
 */
#ifndef BOOTH_COMMON_FILEIO_H
#define BOOTH_COMMON_FILEIO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct bt_atomic_file {
    FILE *f;        /* write here */
    char *path;     /* final name */
    char *tmp_path; /* "<path>.tmp.<pid>" in the same directory */
} bt_atomic_file_t;

/* Whether path may be replaced by a crash-safe write: it does not exist, or it is a regular file.
 * A device, FIFO, directory or symbolic link is refused with one line (a rename over /dev/full
 * would replace the device node). */
int bt_replaceable(const char *path);

/* Opens the temporary file (after bt_replaceable). Returns 0, or BT_EIO with one log line. */
int bt_atomic_open(bt_atomic_file_t *af, const char *path);
/* Flush, fsync, close, rename over path, fsync the directory. On failure the
 * temporary file is removed and the old file is untouched. */
int bt_atomic_commit(bt_atomic_file_t *af);
/* Close and delete the temporary file (after a failed write). Safe twice. */
void bt_atomic_abort(bt_atomic_file_t *af);

/* Bytes free (to this user) on the file system that will hold path, into *avail; BT_EIO (nothing
 * logged) when it cannot tell. A library that fails badly when the disk fills up mid-write —
 * libhdf5 crashes in its object copy — is not started on a write that cannot fit. */
int bt_space_free(const char *path, uint64_t *avail);

/* The whole of data as path, through the crash-safe writer above. */
int bt_write_file_atomic(const char *path, const void *data, size_t len);

/* For files written by a library that takes a path (HDF5, libpng via FILE*):
 * fsync tmp_path, rename it to path, fsync the directory. */
int bt_fsync_rename(const char *tmp_path, const char *path);

/* Reads a whole file into a NUL-terminated malloc'd buffer; *len excludes the NUL. */
int bt_read_file(const char *path, char **data, size_t *len);

/* The entries of dir (not "." or "..") that keep(name, user) accepts (keep NULL: all), sorted by
 * strcmp, as names or as "dir/name" (full_paths): *out is a malloc'd array of n malloc'd strings
 * (bt_free_list). A folder that does not exist has no entries; any other failure is one line and a
 * negative status (out of memory included: never a shorter list). */
int bt_list_dir(const char *dir, bool (*keep)(const char *name, void *user), void *user, bool full_paths, char ***out,
                int *n);
void bt_free_list(char **list, int n);

/* mkdir -p. Returns 0 or BT_EIO. */
int bt_mkdirs(const char *path);
/* mkdir -p of the directory part of a file path (nothing for a bare name). */
int bt_mkdirs_for(const char *file_path);

#endif
