// Model files: checkpoints (the whole training state, to resume) and exported tensor files (the
// parameters by nanoTabPFN's PyTorch names, for predict and for scripts/). Both are read back
// by predict, which learns the model's shape from the file itself (model_file_config).
#pragma once
#include "common.h"
#include "tabpfn.h"
#include "tensor_file.h"

// ----------------------------------------------------------------------------
// checkpoints: 256 x int32 header, then parameters, AdamW m, AdamW v (float32)

enum { CHECKPOINT_MAGIC = 0x4D53434B, CHECKPOINT_VERSION = 1 };

static void checkpoint_save(const char* path, TabPFN* model, int next_step, uint64_t seed) {
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE* f = fopenCheck(tmp, "wb");
    int header[256] = {0};
    TabPFNConfig c = model->config;
    header[0] = CHECKPOINT_MAGIC;
    header[1] = CHECKPOINT_VERSION;
    header[2] = c.E; header[3] = c.heads; header[4] = c.H; header[5] = c.L; header[6] = c.outputs;
    header[7] = next_step;
    header[8] = (int)model->num_parameters;
    header[9] = (int)(seed & 0x7fffffff);
    fwrite_check(header, sizeof(int), 256, f, tmp);
    size_t P = model->num_parameters;
    float* host = (float*)mallocCheck(P * sizeof(float));
    float* blocks[3] = {model->params_memory, model->m_memory, model->v_memory};
    for (int i = 0; i < 3; i++) {
        device_copy_to_host(host, blocks[i], P * sizeof(float));
        fwrite_check(host, sizeof(float), P, f, tmp);
    }
    free(host);
    if (fclose(f) != 0) mosaic_fail("cannot write '%s': %s", tmp, strerror(errno));
    // rename is atomic: a crash mid-write never leaves a half checkpoint under the real name
    if (rename(tmp, path) != 0) mosaic_fail("cannot rename '%s' to '%s': %s", tmp, path, strerror(errno));
}

// returns the step to continue from
static int checkpoint_load(const char* path, TabPFN* model) {
    FILE* f = fopenCheck(path, "rb");
    int header[256];
    fread_check(header, sizeof(int), 256, f, path);
    if (header[0] != CHECKPOINT_MAGIC) mosaic_fail("'%s' is not a Mosaic checkpoint (bad magic)", path);
    if (header[1] != CHECKPOINT_VERSION) mosaic_fail("'%s' has checkpoint version %d, expected %d", path, header[1], CHECKPOINT_VERSION);
    TabPFNConfig c = model->config;
    if (header[2] != c.E || header[3] != c.heads || header[4] != c.H || header[5] != c.L || header[6] != c.outputs)
        mosaic_fail("'%s' holds a model with embed %d heads %d hidden %d layers %d outputs %d; the flags ask for %d %d %d %d %d",
                    path, header[2], header[3], header[4], header[5], header[6], c.E, c.heads, c.H, c.L, c.outputs);
    if (header[8] != (int)model->num_parameters) mosaic_fail("'%s' holds %d parameters, expected %zu", path, header[8], model->num_parameters);
    size_t P = model->num_parameters;
    float* host = (float*)mallocCheck(P * sizeof(float));
    float* blocks[3] = {model->params_memory, model->m_memory, model->v_memory};
    for (int i = 0; i < 3; i++) {
        fread_check(host, sizeof(float), P, f, path);
        for (size_t j = 0; j < P; j++)
            if (!isfinite(host[j])) mosaic_fail("'%s' holds a non-finite value (corrupt checkpoint?)", path);
        device_copy_to_device(blocks[i], host, P * sizeof(float));
    }
    free(host);
    fclose(f);
    return header[7];
}

// the parameters by PyTorch name, in PyTorch shapes, for scripts/ to load
static void export_parameters(const char* path, TabPFN* model) {
    ParameterInfo info[NUM_PARAMETER_TENSORS];
    parameter_infos(info, model->config);
    float* host = (float*)mallocCheck(model->num_parameters * sizeof(float));
    device_copy_to_host(host, model->params_memory, model->num_parameters * sizeof(float));
    TensorFileWriter w;
    tensor_file_writer_open(&w, path);
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
        checkpoint_load(path, model);
        return;
    }
    TensorFile file;
    tensor_file_read(&file, path);
    import_parameters(model, &file);
    tensor_file_free(&file);
}
