// libFuzzer harness helpers (test/fuzz_*.cpp, built by `make fuzz` with -DMOSAIC_FUZZ).
// The readers take a path and fail through mosaic_fail; in fuzz builds that longjmps back to
// the harness (model/common.h) instead of exiting. Include this before any Mosaic header: it
// routes fopen/fclose through a registry, so the files a failed reader left open get closed.
#pragma once
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
// every system and C++ header the readers pull in, first: <cstdio> (reached through mpi.h's C++
// bindings and <algorithm>) #undefs fopen/fclose, which would silently drop the macros below
#include <cstdio>
#include <algorithm>
#include <mpi.h>
#include <omp.h>
#include <cblas.h>
#include <setjmp.h>
#include <unistd.h>

enum { FUZZ_MAX_OPEN = 64 };
static FILE* fuzz_open_files[FUZZ_MAX_OPEN];
static int fuzz_num_open = 0;

static FILE* fuzz_fopen(const char* path, const char* mode) {
    FILE* f = fopen(path, mode);
    if (f && fuzz_num_open < FUZZ_MAX_OPEN) fuzz_open_files[fuzz_num_open++] = f;
    return f;
}

static int fuzz_fclose(FILE* f) {
    for (int i = 0; i < fuzz_num_open; i++)
        if (fuzz_open_files[i] == f) {
            fuzz_open_files[i] = fuzz_open_files[--fuzz_num_open];
            break;
        }
    return fclose(f);
}

// after a failed read: close what the reader left open
static void fuzz_close_leftovers(void) {
    while (fuzz_num_open > 0) fclose(fuzz_open_files[--fuzz_num_open]);
}

// the input as a file the reader can open: one per process (libFuzzer's -fork/-jobs workers differ)
static const char* fuzz_write_input(const uint8_t* data, size_t size, const char* tag) {
    static char path[256];
    if (!path[0]) {
        const char* dir = getenv("TMPDIR");
        snprintf(path, sizeof(path), "%s/mosaic_fuzz_%s_%d.bin", dir && *dir ? dir : "/tmp", tag, (int)getpid());
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) { perror(path); abort(); }
    size_t done = 0;
    while (done < size) {
        ssize_t n = write(fd, data + done, size - done);
        if (n <= 0) { perror(path); abort(); }
        done += (size_t)n;
    }
    close(fd);
    return path;
}

#define fopen fuzz_fopen
#define fclose fuzz_fclose
