// Model files: checkpoints (the whole training state, to resume) and exported tensor files (the
// parameters by nanoTabPFN's PyTorch names, for predict and for scripts/). Both are read back
// by predict, which learns the model's shape from the file itself (model_file_config).
#pragma once
#include "common.h"
#include "tabpfn.h"
#include "tensor_file.h"
#include <fcntl.h>
#include <unistd.h>

// ----------------------------------------------------------------------------
// checkpoints: 256 x int32 header, then float32 blocks of num_parameters each: the parameters
// (what training runs at: schedule-free's y), then the optimizer's state blocks.
//   header [0] magic, [1] version, [2..6] embed heads hidden layers outputs, [7] the next step
//   (= the optimizer's steps taken), [8] num_parameters, [9] seed (31 bits);
//   version 2 adds [10] optimizer (0 AdamW, 1 schedule-free), [11] state blocks (AdamW 2: m, v;
//   schedule-free 3: z, v, x), [12..13] schedule-free's sum of lr_t^2 (a float64, native byte
//   order). Version 1 files are AdamW with m, v. Other words are 0.

enum { CHECKPOINT_MAGIC = 0x4D53434B, CHECKPOINT_VERSION = 2, CHECKPOINT_MAX_STEP = 1 << 30 };

static int checkpoint_state_blocks(int kind) { return kind == OPT_SCHEDULEFREE ? 3 : 2; }

// the optimizer's state blocks in file order (AdamW: m, v; schedule-free: z, v, x)
static void checkpoint_state_pointers(float** blocks, TabPFN* model, int kind) {
    blocks[0] = kind == OPT_SCHEDULEFREE ? model->z_memory : model->m_memory;
    blocks[1] = model->v_memory;
    blocks[2] = kind == OPT_SCHEDULEFREE ? model->avg_memory : NULL;
}

// a file written as tmp becomes path: data on disk first (fsync), then the atomic rename, then
// the directory entry on disk. A failure before the rename leaves the old file (or none) under
// path, never a short one.
static void commit_file(const char* tmp, const char* path) {
    int fd = open(tmp, O_RDONLY);
    if (fd < 0 || fsync(fd) != 0) mosaic_fail("cannot sync '%s' to disk: %s", tmp, strerror(errno));
    close(fd);
    if (rename(tmp, path) != 0) mosaic_fail("cannot rename '%s' to '%s': %s", tmp, path, strerror(errno));
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", path);
    char* slash = strrchr(dir, '/');
    if (slash) *(slash == dir ? slash + 1 : slash) = '\0';
    else snprintf(dir, sizeof(dir), ".");
    fd = open(dir, O_RDONLY);
    if (fd >= 0) { fsync(fd); close(fd); } // best effort: some file systems refuse a directory fsync
}

static void checkpoint_save(const char* path, TabPFN* model, int next_step, uint64_t seed) {
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE* f = fopenCheck(tmp, "wb");
    int header[256] = {0};
    TabPFNConfig c = model->config;
    const int kind = model->optimizer, nblocks = checkpoint_state_blocks(kind);
    header[0] = CHECKPOINT_MAGIC;
    header[1] = CHECKPOINT_VERSION;
    header[2] = c.E; header[3] = c.heads; header[4] = c.H; header[5] = c.L; header[6] = c.outputs;
    header[7] = next_step;
    header[8] = (int)model->num_parameters;
    header[9] = (int)(seed & 0x7fffffff);
    header[10] = kind;
    header[11] = nblocks;
    memcpy(&header[12], &model->lr_sq_sum, sizeof(double));
    fwrite_check(header, sizeof(int), 256, f, tmp);
    size_t P = model->num_parameters;
    float* host = (float*)mallocCheck(P * sizeof(float));
    float* blocks[4] = {model->params_memory};
    checkpoint_state_pointers(blocks + 1, model, kind);
    for (int i = 0; i < 1 + nblocks; i++) {
        device_copy_to_host(host, blocks[i], P * sizeof(float));
        fwrite_check(host, sizeof(float), P, f, tmp);
    }
    free(host);
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) mosaic_fail("cannot write '%s': %s", tmp, strerror(errno));
    if (fclose(f) != 0) mosaic_fail("cannot write '%s': %s", tmp, strerror(errno));
    commit_file(tmp, path);
}

// Reads a checkpoint of this model. weights_only = 0: the whole training state, into a model
// built for training whose optimizer (tabpfn_optimizer_init) is the file's. weights_only = 1:
// only the weights to evaluate (schedule-free: x; AdamW: the parameters) into params_memory.
// Everything the header promises is checked against the file's size before any data is read;
// every value must be finite and second moments non-negative. Returns the next step.
static int checkpoint_read(const char* path, TabPFN* model, int weights_only) {
    FILE* f = fopenCheck(path, "rb");
    int header[256];
    fread_check(header, sizeof(int), 256, f, path);
    if (header[0] != CHECKPOINT_MAGIC) mosaic_fail("'%s' is not a Mosaic checkpoint (bad magic)", path);
    const int version = header[1];
    if (version != 1 && version != CHECKPOINT_VERSION)
        mosaic_fail("'%s' has checkpoint version %d; this build reads 1 and %d", path, version, CHECKPOINT_VERSION);
    TabPFNConfig c = model->config;
    if (header[2] != c.E || header[3] != c.heads || header[4] != c.H || header[5] != c.L || header[6] != c.outputs)
        mosaic_fail("'%s' holds a model with embed %d heads %d hidden %d layers %d outputs %d; the flags ask for %d %d %d %d %d",
                    path, header[2], header[3], header[4], header[5], header[6], c.E, c.heads, c.H, c.L, c.outputs);
    const size_t P = model->num_parameters;
    if (header[8] < 0 || (size_t)header[8] != P) mosaic_fail("'%s' holds %d parameters, expected %zu", path, header[8], P);
    const int next_step = header[7];
    if (next_step < 0 || next_step > CHECKPOINT_MAX_STEP)
        mosaic_fail("'%s' holds next step %d, outside [0, %d] (corrupt checkpoint?)", path, next_step, CHECKPOINT_MAX_STEP);
    const int kind = version == 1 ? OPT_ADAMW : header[10];
    if (kind != OPT_ADAMW && kind != OPT_SCHEDULEFREE) mosaic_fail("'%s' names optimizer %d, not 0 (adamw) or 1 (schedulefree)", path, kind);
    const int nblocks = checkpoint_state_blocks(kind);
    if (version > 1 && header[11] != nblocks)
        mosaic_fail("'%s' has %d optimizer state blocks; %s keeps %d", path, header[11], optimizer_names[kind], nblocks);
    double lr_sq_sum = 0.0;
    if (version > 1) memcpy(&lr_sq_sum, &header[12], sizeof(double));
    if (!(isfinite(lr_sq_sum) && lr_sq_sum >= 0.0))
        mosaic_fail("'%s' holds a sum of squared learning rates %g, not a finite non-negative number", path, lr_sq_sum);
    if (!weights_only && kind != model->optimizer)
        mosaic_fail("'%s' holds %s state but the run uses --optimizer %s", path, optimizer_names[kind], optimizer_names[model->optimizer]);
    // the size, before anything is read: truncated files and trailing bytes are both refused
    if (fseek(f, 0, SEEK_END) != 0) mosaic_fail("cannot seek in '%s': %s", path, strerror(errno));
    const long long size = (long long)ftell(f), want = 1024 + (long long)(1 + nblocks) * (long long)P * 4;
    if (size < want) mosaic_fail("'%s' is truncated: %lld bytes, a %s checkpoint of this model has %lld", path, size, optimizer_names[kind], want);
    if (size > want) mosaic_fail("'%s' has %lld trailing bytes after its %lld (corrupt checkpoint?)", path, size - want, want);

    float* blocks[4] = {model->params_memory, NULL, NULL, NULL};
    if (weights_only) {
        // one block: the weights to evaluate, read into the parameters
        if (kind == OPT_SCHEDULEFREE) { blocks[0] = NULL; blocks[3] = model->params_memory; }
    } else {
        checkpoint_state_pointers(blocks + 1, model, kind);
    }
    // in chunks through a fixed buffer: nothing is allocated from the file's claims
    enum { CHUNK = 16384 };
    static float chunk[CHUNK];
    for (int i = 0; i < 1 + nblocks; i++) {
        if (!blocks[i]) continue;
        if (fseek(f, 1024 + (long)i * (long)P * 4, SEEK_SET) != 0) mosaic_fail("cannot seek in '%s': %s", path, strerror(errno));
        for (size_t off = 0; off < P; off += CHUNK) {
            const size_t n = P - off < CHUNK ? P - off : CHUNK;
            fread_check(chunk, sizeof(float), n, f, path);
            for (size_t j = 0; j < n; j++) {
                if (!isfinite(chunk[j])) mosaic_fail("'%s' holds a non-finite value in block %d (corrupt checkpoint?)", path, i);
                if (i == 2 && chunk[j] < 0.0f) mosaic_fail("'%s' holds a negative second moment %g (corrupt checkpoint?)", path, chunk[j]);
            }
            device_copy_to_device(blocks[i] + off, chunk, n * sizeof(float));
        }
    }
    fclose(f);
    if (!weights_only) model->lr_sq_sum = lr_sq_sum;
    return next_step;
}

// the whole training state (see checkpoint_read); returns the step to continue from
static int checkpoint_load(const char* path, TabPFN* model) {
    // a model built for inference has no optimizer state: it takes the weights to evaluate
    return checkpoint_read(path, model, model->opt_memory == NULL);
}

// the weights to evaluate (schedule-free: the average x) by PyTorch name, in PyTorch shapes,
// for predict and scripts/; written as PATH.tmp, synced, then renamed (commit_file)
static void export_parameters(const char* path, TabPFN* model) {
    ParameterInfo info[NUM_PARAMETER_TENSORS];
    parameter_infos(info, model->config);
    float* host = (float*)mallocCheck(model->num_parameters * sizeof(float));
    device_copy_to_host(host, tabpfn_eval_weights_memory(model), model->num_parameters * sizeof(float));
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    TensorFileWriter w;
    tensor_file_writer_open(&w, tmp);
    w.heads = model->config.heads;
    const float* t = host;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        int layers = info[i].per_layer ? model->config.L : 1;
        for (int l = 0; l < layers; l++) {
            char name[128];
            parameter_name(name, sizeof(name), &info[i], l);
            int dims[2] = {info[i].rows, info[i].cols};
            tensor_file_writer_add(&w, name, t, info[i].cols ? 2 : 1, dims);
            t += parameter_layer_numel(&info[i]);
        }
    }
    tensor_file_writer_close(&w);
    free(host);
    commit_file(tmp, path);
}

// the exported parameters by name into the flat layout (model memory is device memory)
static void import_parameters(TabPFN* model, TensorFile* file) {
    ParameterInfo info[NUM_PARAMETER_TENSORS];
    parameter_infos(info, model->config);
    float* p = model->params_memory;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++)
        for (int l = 0; l < (info[i].per_layer ? model->config.L : 1); l++) {
            char name[128];
            parameter_name(name, sizeof(name), &info[i], l);
            const size_t n = parameter_layer_numel(&info[i]);
            device_copy_to_device(p, tensor_file_get(file, name, (long)n)->data, n * sizeof(float));
            p += n;
        }
}

// 1 for a checkpoint, 0 for a tensor file; anything else is an error
static int model_file_is_checkpoint(const char* path) {
    FILE* f = fopenCheck(path, "rb");
    int magic = 0;
    const size_t got = fread(&magic, sizeof(int), 1, f);
    fclose(f);
    if (got == 1 && magic == CHECKPOINT_MAGIC) return 1;
    if (got == 1 && magic == TENSOR_FILE_MAGIC) return 0;
    mosaic_fail("'%s' is neither a Mosaic checkpoint nor an exported model (tensor file)", path);
    return -1;
}

// the model's shape, from the checkpoint header or from the tensor shapes of an export;
// heads are not in a tensor's shape: exports record them, else default_heads
static TabPFNConfig model_file_config(const char* path, int default_heads) {
    TabPFNConfig c;
    if (model_file_is_checkpoint(path)) {
        FILE* f = fopenCheck(path, "rb");
        int header[256];
        fread_check(header, sizeof(int), 256, f, path);
        fclose(f);
        c.E = header[2]; c.heads = header[3]; c.H = header[4]; c.L = header[5]; c.outputs = header[6];
    } else {
        TensorFile file;
        tensor_file_read(&file, path);
        NamedTensor* fe = tensor_file_get(&file, "feature_encoder.linear_layer.weight", -1);
        NamedTensor* dec1 = tensor_file_get(&file, "decoder.linear1.weight", -1);
        NamedTensor* dec2 = tensor_file_get(&file, "decoder.linear2.weight", -1);
        if (fe->ndim != 2 || dec1->ndim != 2 || dec2->ndim != 2) mosaic_fail("'%s': encoder/decoder weights are not matrices", path);
        c.E = fe->dims[0];
        c.H = dec1->dims[0];
        c.outputs = dec2->dims[0];
        c.heads = file.heads > 0 ? file.heads : default_heads;
        c.L = 0;
        for (;; c.L++) {
            char name[128];
            snprintf(name, sizeof(name), "transformer_blocks.%d.norm1.weight", c.L);
            if (!tensor_file_find(&file, name)) break;
        }
        tensor_file_free(&file);
    }
    if (c.E < 1 || c.heads < 1 || c.H < 1 || c.L < 1 || c.outputs < 2 || c.E % c.heads)
        mosaic_fail("'%s' describes an impossible model: embed %d heads %d hidden %d layers %d outputs %d", path, c.E, c.heads,
                    c.H, c.L, c.outputs);
    return c;
}

// the weights to evaluate, from either kind of file, into a model built with model_file_config
static void model_file_load_parameters(TabPFN* model, const char* path) {
    if (model_file_is_checkpoint(path)) {
        checkpoint_read(path, model, /*weights_only=*/1); // schedule-free: the average x
        return;
    }
    TensorFile file;
    tensor_file_read(&file, path);
    import_parameters(model, &file);
    tensor_file_free(&file);
}
