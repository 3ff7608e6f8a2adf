// Named-tensor files: debug states from the PyTorch reference and parameter exports.
// Format (little-endian): a header of 256 int32: [0] magic 0x4D535446, [1] version 1,
// [2] number of tensors, [3] attention heads of an exported model (0: not recorded), rest 0. Then per tensor: int32 name_len, name bytes (no NUL),
// int32 ndim, int32 dims[ndim], float32 data[prod(dims)] in C order.
#pragma once
#include <sys/types.h>
#include "common.h"

enum { TENSOR_FILE_MAGIC = 0x4D535446, TENSOR_FILE_VERSION = 1, TENSOR_FILE_MAX_DIMS = 8 };

typedef struct {
    char name[256];
    int ndim;
    int dims[TENSOR_FILE_MAX_DIMS];
    long numel;
    float* data;
} NamedTensor;

typedef struct {
    int count;
    int heads; // header word 3: an exported model's attention heads (0: not recorded)
    NamedTensor* tensors;
} TensorFile;

// Every size is checked against the bytes the file still holds before anything is allocated,
// so a corrupt header or dim can neither overflow the element count nor ask for a huge buffer.
static void tensor_file_read(TensorFile* out, const char* path) {
    memset(out, 0, sizeof(*out));
    FILE* f = fopenCheck(path, "rb");
    if (fseeko(f, 0, SEEK_END) != 0) mosaic_fail("cannot seek in '%s': %s", path, strerror(errno));
    const int64_t size = (int64_t)ftello(f);
    if (size < 0 || fseeko(f, 0, SEEK_SET) != 0) mosaic_fail("cannot tell the size of '%s': %s", path, strerror(errno));
    int header[256];
    fread_check(header, sizeof(int), 256, f, path);
    if (header[0] != TENSOR_FILE_MAGIC) mosaic_fail("'%s' is not a Mosaic tensor file (bad magic %d)", path, header[0]);
    if (header[1] != TENSOR_FILE_VERSION) mosaic_fail("'%s' has tensor file version %d, expected %d", path, header[1], TENSOR_FILE_VERSION);
    int64_t left = size - (int64_t)sizeof(header); // bytes not yet read
    // the smallest tensor takes 13 bytes: name length, a 1-byte name, ndim 0, one float
    if (header[2] < 0 || (int64_t)header[2] * 13 > left)
        mosaic_fail("'%s' claims %d tensors but holds only %lld bytes after its header", path, header[2], (long long)left);
    out->count = header[2];
    out->heads = header[3];
    out->tensors = (NamedTensor*)callocCheck((size_t)out->count * sizeof(NamedTensor));
    for (int i = 0; i < out->count; i++) {
        NamedTensor* t = &out->tensors[i];
        int name_len;
        fread_check(&name_len, sizeof(int), 1, f, path);
        if (name_len <= 0 || name_len >= (int)sizeof(t->name)) mosaic_fail("'%s': tensor %d has a bad name length %d", path, i, name_len);
        fread_check(t->name, 1, name_len, f, path);
        t->name[name_len] = '\0';
        if ((int)strlen(t->name) != name_len) mosaic_fail("'%s': tensor %d has a NUL byte in its name", path, i);
        fread_check(&t->ndim, sizeof(int), 1, f, path);
        if (t->ndim < 0 || t->ndim > TENSOR_FILE_MAX_DIMS) mosaic_fail("'%s': tensor '%s' has %d dims", path, t->name, t->ndim);
        fread_check(t->dims, sizeof(int), t->ndim, f, path);
        left -= 8 + name_len + 4 * (int64_t)t->ndim;
        // numel <= left / 4 at every factor, so the product never overflows
        t->numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            if (t->dims[d] < 0) mosaic_fail("'%s': tensor '%s' has a negative dim", path, t->name);
            if (t->dims[d] > 0 && t->numel > (left / 4) / t->dims[d])
                mosaic_fail("'%s': tensor '%s' claims more data than the file holds (%lld bytes left)", path, t->name, (long long)left);
            t->numel *= t->dims[d];
        }
        if (t->numel * 4 > left)
            mosaic_fail("'%s': tensor '%s' claims more data than the file holds (%lld bytes left)", path, t->name, (long long)left);
        t->data = (float*)mallocCheck((size_t)t->numel * sizeof(float));
        fread_check(t->data, sizeof(float), (size_t)t->numel, f, path);
        left -= 4 * t->numel;
    }
    if (left != 0) mosaic_fail("'%s' has %lld trailing bytes after its %d tensors (corrupt or not a tensor file)", path, (long long)left, out->count);
    fclose(f);
}

static NamedTensor* tensor_file_find(TensorFile* file, const char* name) {
    for (int i = 0; i < file->count; i++)
        if (strcmp(file->tensors[i].name, name) == 0) return &file->tensors[i];
    return NULL;
}

// like tensor_file_find, but a missing tensor or a wrong element count is an error
static NamedTensor* tensor_file_get(TensorFile* file, const char* name, long numel) {
    NamedTensor* t = tensor_file_find(file, name);
    if (t == NULL) mosaic_fail("tensor '%s' is missing from the tensor file", name);
    if (numel >= 0 && t->numel != numel) mosaic_fail("tensor '%s' has %ld elements, expected %ld", name, t->numel, numel);
    return t;
}

static void tensor_file_free(TensorFile* file) {
    for (int i = 0; i < file->count; i++) free(file->tensors[i].data);
    free(file->tensors);
    file->count = 0;
    file->tensors = NULL;
}

// writing: open, append tensors, close (the count is patched into the header at close)
typedef struct {
    FILE* f;
    const char* path;
    int count;
    int heads; // written to header word 3 at close (0: not recorded)
} TensorFileWriter;

static void tensor_file_writer_open(TensorFileWriter* w, const char* path) {
    w->f = fopenCheck(path, "wb");
    w->path = path;
    w->count = 0;
    w->heads = 0;
    int header[256] = {0};
    fwrite_check(header, sizeof(int), 256, w->f, path);
}

static void tensor_file_writer_add(TensorFileWriter* w, const char* name, const float* data, int ndim, const int* dims) {
    int name_len = (int)strlen(name);
    long numel = 1;
    for (int d = 0; d < ndim; d++) numel *= dims[d];
    fwrite_check(&name_len, sizeof(int), 1, w->f, w->path);
    fwrite_check(name, 1, name_len, w->f, w->path);
    fwrite_check(&ndim, sizeof(int), 1, w->f, w->path);
    fwrite_check(dims, sizeof(int), ndim, w->f, w->path);
    fwrite_check(data, sizeof(float), numel, w->f, w->path);
    w->count++;
}

static void tensor_file_writer_close(TensorFileWriter* w) {
    int header[256] = {0};
    header[0] = TENSOR_FILE_MAGIC;
    header[1] = TENSOR_FILE_VERSION;
    header[2] = w->count;
    header[3] = w->heads;
    fseek(w->f, 0, SEEK_SET);
    fwrite_check(header, sizeof(int), 256, w->f, w->path);
    if (fclose(w->f) != 0) mosaic_fail("cannot write '%s': %s", w->path, strerror(errno));
    w->f = NULL;
}
