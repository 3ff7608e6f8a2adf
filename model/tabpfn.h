// The nanoTabPFN-style model: configuration, parameter and activation layout, forward,
// backward and the AdamW update. This is orchestration: it never reads or writes tensor
// memory itself, only hands pointers to leaf ops (model/ops.h, attention/attention_ops.h) and
// to the communicator, so the CUDA build reuses it unchanged.
//
// Shapes: B datasets, R rows, F features, C = F + 1 columns (target last), E embedding,
// h heads, H MLP hidden, K outputs, S train rows, N = B*R*C cells, T = B*(R-S) test rows.
#pragma once
#include "common.h"
#include "ops.h"
#include "../attention/axis_layout.h"
#include "../attention/axis_attention.h"
#include "../attention/row_attention.h"
#include "../comm/comm.h"

typedef struct {
    int E;       // embedding size
    int heads;   // attention heads (E % heads == 0)
    int H;       // MLP hidden size
    int L;       // transformer layers
    int outputs; // classes the decoder scores
} TabPFNConfig;

static inline TabPFNConfig tabpfn_config_default(void) {
    TabPFNConfig config = {96, 4, 192, 3, 2};
    return config;
}

// ----------------------------------------------------------------------------
// parameters: one allocation; gradients and AdamW moments share the layout

enum {
    P_FE_W, P_FE_B, P_TE_W, P_TE_B,  // encoders
    P_FA_IN_W, P_FA_IN_B, P_FA_OUT_W, P_FA_OUT_B, P_LN1_W, P_LN1_B,  // per layer: features
    P_RA_IN_W, P_RA_IN_B, P_RA_OUT_W, P_RA_OUT_B, P_LN2_W, P_LN2_B,  // per layer: rows
    P_FC1_W, P_FC1_B, P_FC2_W, P_FC2_B, P_LN3_W, P_LN3_B,            // per layer: MLP
    P_DEC1_W, P_DEC1_B, P_DEC2_W, P_DEC2_B,                          // decoder
    NUM_PARAMETER_TENSORS
};

typedef struct {
    float* fe_w;     // (E, 1) feature encoder
    float* fe_b;     // (E)
    float* te_w;     // (E, 1) target encoder
    float* te_b;     // (E)
    float* fa_in_w;  // (L, 3E, E) feature attention fused q/k/v projection
    float* fa_in_b;  // (L, 3E)
    float* fa_out_w; // (L, E, E)
    float* fa_out_b; // (L, E)
    float* ln1_w;    // (L, E)
    float* ln1_b;    // (L, E)
    float* ra_in_w;  // (L, 3E, E) row attention
    float* ra_in_b;  // (L, 3E)
    float* ra_out_w; // (L, E, E)
    float* ra_out_b; // (L, E)
    float* ln2_w;    // (L, E)
    float* ln2_b;    // (L, E)
    float* fc1_w;    // (L, H, E)
    float* fc1_b;    // (L, H)
    float* fc2_w;    // (L, E, H)
    float* fc2_b;    // (L, E)
    float* ln3_w;    // (L, E)
    float* ln3_b;    // (L, E)
    float* dec1_w;   // (H, E) decoder
    float* dec1_b;   // (H)
    float* dec2_w;   // (K, H)
    float* dec2_b;   // (K)
} ParameterTensors;

// per tensor: its PyTorch name (%d = layer), whether it is stacked per layer, and its
// per-layer shape (rows, cols); cols 0 means a vector
typedef struct {
    const char* name;
    int per_layer;
    int rows, cols;
} ParameterInfo;

static void parameter_infos(ParameterInfo* info, TabPFNConfig c) {
    const int E = c.E, H = c.H, K = c.outputs;
    const char* fa = "transformer_blocks.%d.self_attention_between_features.";
    const char* ra = "transformer_blocks.%d.self_attention_between_datapoints.";
    static char names[NUM_PARAMETER_TENSORS][128];
    snprintf(names[P_FA_IN_W], 128, "%sin_proj_weight", fa);
    snprintf(names[P_FA_IN_B], 128, "%sin_proj_bias", fa);
    snprintf(names[P_FA_OUT_W], 128, "%sout_proj.weight", fa);
    snprintf(names[P_FA_OUT_B], 128, "%sout_proj.bias", fa);
    snprintf(names[P_RA_IN_W], 128, "%sin_proj_weight", ra);
    snprintf(names[P_RA_IN_B], 128, "%sin_proj_bias", ra);
    snprintf(names[P_RA_OUT_W], 128, "%sout_proj.weight", ra);
    snprintf(names[P_RA_OUT_B], 128, "%sout_proj.bias", ra);
    ParameterInfo table[NUM_PARAMETER_TENSORS] = {
        {"feature_encoder.linear_layer.weight", 0, E, 1},
        {"feature_encoder.linear_layer.bias", 0, E, 0},
        {"target_encoder.linear_layer.weight", 0, E, 1},
        {"target_encoder.linear_layer.bias", 0, E, 0},
        {names[P_FA_IN_W], 1, 3 * E, E},
        {names[P_FA_IN_B], 1, 3 * E, 0},
        {names[P_FA_OUT_W], 1, E, E},
        {names[P_FA_OUT_B], 1, E, 0},
        {"transformer_blocks.%d.norm1.weight", 1, E, 0},
        {"transformer_blocks.%d.norm1.bias", 1, E, 0},
        {names[P_RA_IN_W], 1, 3 * E, E},
        {names[P_RA_IN_B], 1, 3 * E, 0},
        {names[P_RA_OUT_W], 1, E, E},
        {names[P_RA_OUT_B], 1, E, 0},
        {"transformer_blocks.%d.norm2.weight", 1, E, 0},
        {"transformer_blocks.%d.norm2.bias", 1, E, 0},
        {"transformer_blocks.%d.linear1.weight", 1, H, E},
        {"transformer_blocks.%d.linear1.bias", 1, H, 0},
        {"transformer_blocks.%d.linear2.weight", 1, E, H},
        {"transformer_blocks.%d.linear2.bias", 1, E, 0},
        {"transformer_blocks.%d.norm3.weight", 1, E, 0},
        {"transformer_blocks.%d.norm3.bias", 1, E, 0},
        {"decoder.linear1.weight", 0, H, E},
        {"decoder.linear1.bias", 0, H, 0},
        {"decoder.linear2.weight", 0, K, H},
        {"decoder.linear2.bias", 0, K, 0},
    };
    memcpy(info, table, sizeof(table));
}

// the PyTorch name of tensor i of layer l (l ignored for tensors that are not per layer)
static void parameter_name(char* out, size_t size, const ParameterInfo* info, int layer) {
    if (info->per_layer) snprintf(out, size, info->name, layer);
    else snprintf(out, size, "%s", info->name);
}

// floats of one layer's slice of tensor i
static inline size_t parameter_layer_numel(const ParameterInfo* info) {
    return (size_t)info->rows * (info->cols ? info->cols : 1);
}

static void fill_in_parameter_sizes(size_t* sizes, TabPFNConfig c) {
    ParameterInfo info[NUM_PARAMETER_TENSORS];
    parameter_infos(info, c);
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++)
        sizes[i] = parameter_layer_numel(&info[i]) * (info[i].per_layer ? c.L : 1);
}

// points the named tensors into one block laid out in enum order
static void point_parameters(ParameterTensors* p, float* memory, const size_t* sizes) {
    float** ptrs[NUM_PARAMETER_TENSORS] = {
        &p->fe_w, &p->fe_b, &p->te_w, &p->te_b,
        &p->fa_in_w, &p->fa_in_b, &p->fa_out_w, &p->fa_out_b, &p->ln1_w, &p->ln1_b,
        &p->ra_in_w, &p->ra_in_b, &p->ra_out_w, &p->ra_out_b, &p->ln2_w, &p->ln2_b,
        &p->fc1_w, &p->fc1_b, &p->fc2_w, &p->fc2_b, &p->ln3_w, &p->ln3_b,
        &p->dec1_w, &p->dec1_b, &p->dec2_w, &p->dec2_b,
    };
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        *ptrs[i] = memory;
        memory += sizes[i];
    }
}

// ----------------------------------------------------------------------------
// activations: one arena sized once for the largest batch the run will see

typedef struct {
    long max_cells;   // N = B*R*C held on this rank
    long max_rows;    // B*R (also bounds the test rows T)
    long max_inputs;  // B*R*F
    int max_B, max_F;
    int max_R_global; // rows of a whole table: sizes the row-attention exchange buffers
} ActivationCapacity;

// how this rank takes part in a run: the groups it reduces over and the row-attention
// strategy of every layer
typedef struct {
    Comm* seq;          // ranks holding rows of the same datasets (row sharding)
    Comm* world;        // every rank: the loss and the gradients are summed over it
    RowStrategy* row_strategy; // (L) per layer; NULL: ROW_LOCAL everywhere
    int overlap;        // post transfers before the compute that hides them
    // the seq group as an r x c grid, for mesh2d / composed / hierarchical (else NULL):
    // mesh_row = the c ranks with the same k / c, mesh_col = the r ranks with the same k % c
    Comm* mesh_row;
    Comm* mesh_col;
    RowStrategy inner, outer; // composed / hierarchical: per mesh dimension
} ParallelConfig;

// one process: every group is this process alone, every layer attends locally
static inline ParallelConfig parallel_config_single(Comm* comm) {
    ParallelConfig par = {comm, comm, NULL, 1, NULL, NULL, ROW_A2A, ROW_RING};
    return par;
}

typedef struct {
    float* xnorm;    // (B, R, F) standardised, clipped features
    float* ynorm;    // (B, R) target encoder input: train labels, then the train-label mean
    float* encoded;  // (B, R, C, E) layer 0 input
    float* fa_qkv;   // (L, N, 3E) feature attention q/k/v
    float* fa_o;     // (L, N, E) feature attention output, heads side by side
    float* fa_lse;   // (L, B*R, h, C)
    float* fa_res;   // (L, N, E) x + feature attention (LayerNorm1 input)
    float* ln1;      // (L, N, E)
    float* ln1_mean; // (L, N)
    float* ln1_rstd; // (L, N)
    float* ra_qkv;   // (L, N, 3E) row attention q/k/v
    float* ra_o;     // (L, N, E)
    float* ra_lse;   // (L, B*C, h, R)
    float* ra_res;   // (L, N, E) ln1 + row attention (LayerNorm2 input)
    float* ln2;      // (L, N, E)
    float* ln2_mean; // (L, N)
    float* ln2_rstd; // (L, N)
    float* fc1;      // (L, N, H) MLP pre-activation
    float* fc1_gelu; // (L, N, H)
    float* mlp_res;  // (L, N, E) ln2 + MLP (LayerNorm3 input)
    float* ln3;      // (L, N, E) layer output
    float* ln3_mean; // (L, N)
    float* ln3_rstd; // (L, N)
    float* dec_in;   // (T, E) target column of the test rows
    float* dec_h;    // (T, H)
    float* dec_gelu; // (T, H)
    float* logits;   // (T, K)
    float* probs;    // (T, K)
    float* loss_sum; // (1)
} ActivationTensors;

// gradients of activations, reused layer after layer
typedef struct {
    float* dx;       // (N, E) gradient of the residual stream at the current layer boundary
    float* dres;     // (N, E) gradient of a LayerNorm input
    float* dtmp;     // (N, E) gradient of a sub-block's input
    float* dattn;    // (N, E) gradient of an attention output
    float* dqkv;     // (N, 3E)
    float* dh;       // (N, H)
    float* dh_gelu;  // (N, H)
    float* ddec_in;  // (T, E)
    float* ddec_h;   // (T, H)
    float* ddec_gelu;// (T, H)
    float* dlogits;  // (T, K)
} GradActTensors;

typedef struct {
    TabPFNConfig config;
    Comm* seq_comm;   // ranks that share the rows of the same datasets
    Comm* world_comm; // every rank
    RowAttention* row_attn; // (L) one context per layer
    float* row_scratch;     // the strategies' exchange buffers

    size_t param_sizes[NUM_PARAMETER_TENSORS];
    size_t num_parameters;
    ParameterTensors params;
    float* params_memory;
    ParameterTensors grads;
    float* grads_memory;
    // optimizer state (training only): one allocation of 3 parameter-sized blocks, in the
    // parameters' layout; AdamW uses m and v, schedule-free z, v and x (params_memory is its y)
    float* opt_memory;
    float* m_memory;   // AdamW: first moment
    float* z_memory;   // schedule-free: z, the base sequence (the same block as m: one optimizer runs)
    float* v_memory;   // second moment (both)
    float* avg_memory; // schedule-free: x, the averaged weights that evaluation, export and predict use
    int optimizer;     // OptimizerKind of that state (tabpfn_optimizer_init, checkpoint_load)
    double lr_sq_sum;  // schedule-free: sum of lr_t^2 over the steps taken (the average's weights)
    double* grad_sumsq; // (1) the gradients' sum of squares, on the device

    ActivationCapacity cap;
    ActivationTensors acts;
    float* acts_memory;
    GradActTensors dacts;
    float* dacts_memory;

    // the current batch, on the device
    float* x;        // (B, R, F)
    float* y;        // (B, R)
    double* stats;   // (B, F, 2) feature [count, sum], (B, 2) label stats, (B, F) feature squared deviations
    int B, R, F, S;       // held on this rank
    int S_global, T_global; // train and test rows of the whole tables
    double num_test_rows; // over every rank: the loss's denominator
    float mean_loss;      // of the last forward
    int prune_last_layer; // the last layer computes only what reaches the decoder (tabpfn_forward); 1 by default
} TabPFN;

// ----------------------------------------------------------------------------
// construction

static void tabpfn_validate_config(TabPFNConfig c) {
    if (c.E <= 0 || c.heads <= 0 || c.H <= 0 || c.L <= 0) mosaic_fail("model sizes must be positive (embed %d, heads %d, hidden %d, layers %d)", c.E, c.heads, c.H, c.L);
    if (c.E % c.heads != 0) mosaic_fail("--embed %d is not divisible by --heads %d", c.E, c.heads);
    if (c.E / c.heads > FA_MAX_HEAD_DIM) mosaic_fail("head size %d exceeds %d: use more --heads", c.E / c.heads, (int)FA_MAX_HEAD_DIM);
    if (c.outputs < 2) mosaic_fail("--outputs %d: a classifier needs at least 2 outputs", c.outputs);
}

// PyTorch's default initialisation, drawn on the host from one seed
static void tabpfn_init_parameters(TabPFN* model, uint64_t seed) {
    TabPFNConfig c = model->config;
    float* host = (float*)mallocCheck(model->num_parameters * sizeof(float));
    ParameterTensors p;
    point_parameters(&p, host, model->param_sizes);
    Rng rng;
    rng_seed(&rng, seed);
    ParameterInfo info[NUM_PARAMETER_TENSORS];
    parameter_infos(info, c);
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        float* t = host;
        for (int j = 0; j < i; j++) t += model->param_sizes[j];
        double bound;
        switch (i) {
            case P_FA_IN_W: case P_RA_IN_W: bound = sqrt(6.0 / (c.E + 3 * c.E)); break; // xavier_uniform
            case P_FA_IN_B: case P_RA_IN_B: case P_FA_OUT_B: case P_RA_OUT_B: bound = 0.0; break;
            case P_LN1_B: case P_LN2_B: case P_LN3_B: bound = 0.0; break;
            case P_FE_W: case P_FE_B: case P_TE_W: case P_TE_B: bound = 1.0; break; // fan_in 1
            case P_FC2_W: case P_FC2_B: case P_DEC2_W: case P_DEC2_B: bound = 1.0 / sqrt((double)c.H); break;
            default: bound = 1.0 / sqrt((double)c.E); break; // E -> * linears
        }
        for (size_t j = 0; j < model->param_sizes[i]; j++) t[j] = (float)((2.0 * rng_uniform(&rng) - 1.0) * bound);
        if (i == P_LN1_W || i == P_LN2_W || i == P_LN3_W)
            for (size_t j = 0; j < model->param_sizes[i]; j++) t[j] = 1.0f;
    }
    device_copy_to_device(model->params_memory, host, model->num_parameters * sizeof(float));
    free(host);
}

// Allocates everything the run will need, once. train = 0 skips gradients and optimizer.
static void tabpfn_build(TabPFN* model, TabPFNConfig config, ActivationCapacity cap, int train,
                         const ParallelConfig* par) {
    memset(model, 0, sizeof(*model));
    tabpfn_validate_config(config);
    model->config = config;
    model->seq_comm = par->seq;
    model->world_comm = par->world;
    model->cap = cap;
    model->prune_last_layer = 1;
    const TabPFNConfig c = config;
    const long N = cap.max_cells, BR = cap.max_rows;
    const int E = c.E, H = c.H, L = c.L, K = c.outputs, h = c.heads;

    fill_in_parameter_sizes(model->param_sizes, c);
    model->num_parameters = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) model->num_parameters += model->param_sizes[i];
    model->params_memory = (float*)device_malloc(model->num_parameters * sizeof(float));
    point_parameters(&model->params, model->params_memory, model->param_sizes);

    // activation arena: (pointer, floats) in struct order
    ActivationTensors* a = &model->acts;
    // inference (train = 0) reads no layer's activations back: the layers share one set (tabpfn_forward)
    const long LA = train ? L : 1;
    struct { float** ptr; long floats; } acts_layout[] = {
        {&a->xnorm, cap.max_inputs}, {&a->ynorm, BR}, {&a->encoded, N * E},
        {&a->fa_qkv, LA * N * 3 * E}, {&a->fa_o, LA * N * E}, {&a->fa_lse, LA * N * h}, {&a->fa_res, LA * N * E},
        {&a->ln1, LA * N * E}, {&a->ln1_mean, LA * N}, {&a->ln1_rstd, LA * N},
        {&a->ra_qkv, LA * N * 3 * E}, {&a->ra_o, LA * N * E}, {&a->ra_lse, LA * N * h}, {&a->ra_res, LA * N * E},
        {&a->ln2, LA * N * E}, {&a->ln2_mean, LA * N}, {&a->ln2_rstd, LA * N},
        {&a->fc1, LA * N * H}, {&a->fc1_gelu, LA * N * H}, {&a->mlp_res, LA * N * E},
        {&a->ln3, LA * N * E}, {&a->ln3_mean, LA * N}, {&a->ln3_rstd, LA * N},
        {&a->dec_in, BR * E}, {&a->dec_h, BR * H}, {&a->dec_gelu, BR * H},
        {&a->logits, BR * K}, {&a->probs, BR * K}, {&a->loss_sum, 1},
    };
    long total = 0;
    for (size_t i = 0; i < sizeof(acts_layout) / sizeof(acts_layout[0]); i++) total += acts_layout[i].floats;
    model->acts_memory = (float*)device_malloc((size_t)total * sizeof(float));
    float* cursor = model->acts_memory;
    for (size_t i = 0; i < sizeof(acts_layout) / sizeof(acts_layout[0]); i++) {
        *acts_layout[i].ptr = cursor;
        cursor += acts_layout[i].floats;
    }

    // row attention: a context per layer; exchange buffers shared by the layers unless a
    // strategy keeps state from forward to backward
    model->row_attn = (RowAttention*)callocCheck((size_t)L * sizeof(RowAttention));
    RowCapacity row_cap = {cap.max_B, cap.max_R_global, cap.max_F + 1, E, h, par->mesh_col ? par->mesh_col->size : 1,
                           par->mesh_row ? par->mesh_row->size : par->seq->size};
    size_t shared_floats = 0, total_floats = 0;
    for (int l = 0; l < L; l++) {
        RowStrategy st = par->row_strategy ? par->row_strategy[l] : ROW_LOCAL;
        size_t n = row_attention_scratch_floats(st, row_cap, par->seq->size);
        if (row_attention_keeps_state(st)) total_floats += n;
        else if (n > shared_floats) shared_floats = n;
    }
    total_floats += shared_floats;
    model->row_scratch = total_floats ? (float*)device_malloc(total_floats * sizeof(float)) : NULL;
    float* own = model->row_scratch + shared_floats;
    for (int l = 0; l < L; l++) {
        RowAttention* ra = &model->row_attn[l];
        ra->strategy = par->row_strategy ? par->row_strategy[l] : ROW_LOCAL;
        ra->group = par->seq;
        ra->overlap = par->overlap;
        ra->mesh_row = par->mesh_row;
        ra->mesh_col = par->mesh_col;
        ra->inner = par->inner;
        ra->outer = par->outer;
        ra->unit = 1;
        ra->E = E;
        ra->heads = h;
        ra->cap = row_cap;
        ra->scratch_floats = row_attention_scratch_floats(ra->strategy, row_cap, par->seq->size);
        if (row_attention_keeps_state(ra->strategy)) {
            ra->scratch = own;
            own += ra->scratch_floats;
        } else {
            ra->scratch = model->row_scratch;
        }
    }

    model->x = (float*)device_malloc((size_t)cap.max_inputs * sizeof(float));
    model->y = (float*)device_malloc((size_t)BR * sizeof(float));
    model->stats = (double*)device_malloc((size_t)cap.max_B * (cap.max_F * 3 + 2) * sizeof(double));

    if (train) {
        model->grads_memory = (float*)device_malloc(model->num_parameters * sizeof(float));
        model->opt_memory = (float*)device_malloc(3 * model->num_parameters * sizeof(float));
        model->m_memory = model->z_memory = model->opt_memory;
        model->v_memory = model->opt_memory + model->num_parameters;
        model->avg_memory = model->opt_memory + 2 * model->num_parameters;
        device_memset_zero(model->grads_memory, model->num_parameters * sizeof(float));
        device_memset_zero(model->opt_memory, 3 * model->num_parameters * sizeof(float));
        point_parameters(&model->grads, model->grads_memory, model->param_sizes);
        model->grad_sumsq = (double*)device_malloc(sizeof(double));

        GradActTensors* g = &model->dacts;
        struct { float** ptr; long floats; } dacts_layout[] = {
            {&g->dx, N * E}, {&g->dres, N * E}, {&g->dtmp, N * E}, {&g->dattn, N * E}, {&g->dqkv, N * 3 * E},
            {&g->dh, N * H}, {&g->dh_gelu, N * H}, {&g->ddec_in, BR * E}, {&g->ddec_h, BR * H},
            {&g->ddec_gelu, BR * H}, {&g->dlogits, BR * K},
        };
        long dtotal = 0;
        for (size_t i = 0; i < sizeof(dacts_layout) / sizeof(dacts_layout[0]); i++) dtotal += dacts_layout[i].floats;
        model->dacts_memory = (float*)device_malloc((size_t)dtotal * sizeof(float));
        cursor = model->dacts_memory;
        for (size_t i = 0; i < sizeof(dacts_layout) / sizeof(dacts_layout[0]); i++) {
            *dacts_layout[i].ptr = cursor;
            cursor += dacts_layout[i].floats;
        }
    }
    // the leaf ops' own scratch at its largest now, so that nothing is allocated once steps run
    // (the CPU ops have none): the reduction partials (the widest bias: 3E, H or K; the loss of at
    // most B*R test rows), and flash attention's row dots, one per (sequence, head, query), whose
    // queries lie in the q/k/v activations (N cells x h heads) or in the row strategies' scratch
    // (d floats each)
    const int widest = 3 * E > H ? (3 * E > K ? 3 * E : K) : (H > K ? H : K);
    ops_reserve_scratch(BR, widest);
    const long scratch_queries = (long)(total_floats / (size_t)(E / h));
    flash_attention_reserve_scratch(N * h > scratch_queries ? N * h : scratch_queries);
}

static void tabpfn_free(TabPFN* model) {
    device_free(model->params_memory);
    device_free(model->grads_memory);
    device_free(model->opt_memory);
    device_free(model->grad_sumsq);
    device_free(model->acts_memory);
    device_free(model->dacts_memory);
    device_free(model->x);
    device_free(model->y);
    device_free(model->stats);
    device_free(model->row_scratch);
    free(model->row_attn);
}

// copies a host batch (x (B, R, F), y (B, R)) to the device
static void tabpfn_upload_batch(TabPFN* model, const float* x, const float* y, int B, int R, int F, int S) {
    const ActivationCapacity cap = model->cap;
    const long C = F + 1;
    if (B > cap.max_B || F > cap.max_F || (long)B * R * C > cap.max_cells || (long)B * R > cap.max_rows)
        mosaic_fail("a batch of %d x %d rows x %d features exceeds the buffers sized at start-up", B, R, F);
    if (S < 0 || S > R) mosaic_fail("a batch needs 0 <= train rows <= rows, got %d of %d", S, R);
    device_copy_to_device(model->x, x, (size_t)B * R * F * sizeof(float));
    device_copy_to_device(model->y, y, (size_t)B * R * sizeof(float));
    model->B = B;
    model->R = R;
    model->F = F;
    model->S = S;
    model->S_global = S;
    model->T_global = R - S;
}

// for a row-sharded batch: the whole tables' train and test rows (every rank the same)
static void tabpfn_set_global_rows(TabPFN* model, int S_global, int T_global) {
    model->S_global = S_global;
    model->T_global = T_global;
}

// ----------------------------------------------------------------------------
// forward: encoders, L layers, decoder, loss. Fills model->mean_loss.
//
// Only the target column of the test rows reaches the decoder, so the last layer computes
// what that needs and nothing else (model->prune_last_layer, on unless a test turns it off):
// its feature attention takes queries from the target cell of each row (keys and values from
// every cell), its row attention runs on the target column alone (a one-column table), and its
// out projection, MLP and LayerNorms run on the test rows' target cells. That is about two
// thirds of the last layer's work, the same on every build and strategy.

// one layer's activations: layer l's slices of the arena (inference: every layer in slice 0)
typedef struct {
    float *fa_qkv, *fa_o, *fa_lse, *fa_res, *ln1, *ln1_mean, *ln1_rstd;
    float *ra_qkv, *ra_o, *ra_lse, *ra_res, *ln2, *ln2_mean, *ln2_rstd;
    float *fc1, *fc1_gelu, *mlp_res, *ln3, *ln3_mean, *ln3_rstd;
} LayerActivations;

static LayerActivations layer_activations(const TabPFN* model, int l) {
    const TabPFNConfig c = model->config;
    const ActivationTensors a = model->acts;
    const long N = (long)model->B * model->R * (model->F + 1), E = c.E, H = c.H, h = c.heads;
    const long lN = (model->grads_memory ? l : 0) * N;
    LayerActivations la = {
        a.fa_qkv + lN * 3 * E, a.fa_o + lN * E, a.fa_lse + lN * h, a.fa_res + lN * E, a.ln1 + lN * E,
        a.ln1_mean + lN, a.ln1_rstd + lN,
        a.ra_qkv + lN * 3 * E, a.ra_o + lN * E, a.ra_lse + lN * h, a.ra_res + lN * E, a.ln2 + lN * E,
        a.ln2_mean + lN, a.ln2_rstd + lN,
        a.fc1 + lN * H, a.fc1_gelu + lN * H, a.mlp_res + lN * E, a.ln3 + lN * E, a.ln3_mean + lN, a.ln3_rstd + lN,
    };
    return la;
}

// The pruned last layer's tensors, carved from the same slices (each fits: B*R <= N cells,
// and C >= 2 so two (B*R, E) pieces fit in one (N, E) slice).
//   fa_kv (B, R, C, 2E)  keys and values of every cell      fa_q (B*R, E) target-cell queries
//   xt (B*R, E)          the layer input's target column     fa_res_t, ln1_t (B*R, E)
//   ra_qkv_t (B*R, 3E), ra_o_t (B*R, E)  row attention on the target column, every row
//   ra_o_test, ln1_test, ra_res_t, ln2_t, mlp_res_t (B*T, E); fc1_t, fc1_gelu_t (B*T, H)
//   the LayerNorm3 output is model->acts.dec_in (B*T, E), the decoder's input
typedef struct {
    float *fa_kv, *fa_q, *xt, *fa_res_t, *ln1_t, *ra_qkv_t, *ra_o_t, *ra_o_test, *ln1_test, *ra_res_t;
    float *ln2_t, *fc1_t, *fc1_gelu_t, *mlp_res_t;
} TargetLayerActivations;

static TargetLayerActivations target_layer_activations(const LayerActivations* la, long N, long BR, int E) {
    TargetLayerActivations t = {
        la->fa_qkv, la->fa_qkv + N * 2 * E, la->fa_res + BR * E, la->fa_res, la->ln1, la->ra_qkv, la->ra_o,
        la->ra_res + BR * E, la->mlp_res, la->ra_res, la->ln2, la->fc1, la->fc1_gelu, la->mlp_res,
    };
    return t;
}

// whether this batch runs the pruned last layer: asked for, and the last layer's row strategy
// can spread a one-column table over its group (else the whole layer runs)
static int tabpfn_prunes_last_layer(const TabPFN* model) {
    return model->prune_last_layer && row_attention_fits_columns(&model->row_attn[model->config.L - 1], model->B, 1);
}

// layer l on every cell: x (N, E) in, la.ln3 (N, E) out
static void layer_forward(TabPFN* model, int l, const float* x) {
    const TabPFNConfig c = model->config;
    const int B = model->B, R = model->R, C = model->F + 1, S = model->S;
    const int E = c.E, H = c.H, h = c.heads;
    const long N = (long)B * R * C;
    const ParameterTensors p = model->params;
    const LayerActivations la = layer_activations(model, l);

    // attention between features: each row's C cells attend to each other
    matmul_forward(la.fa_qkv, x, p.fa_in_w + (long)l * 3 * E * E, p.fa_in_b + l * 3 * E, N, E, 3 * E);
    feature_attention_forward(la.fa_o, la.fa_lse, la.fa_qkv, B, R, C, E, h);
    matmul_forward(la.fa_res, la.fa_o, p.fa_out_w + (long)l * E * E, p.fa_out_b + l * E, N, E, E);
    residual_layernorm_forward(la.fa_res, la.ln1, la.ln1_mean, la.ln1_rstd, la.fa_res, x, p.ln1_w + l * E,
                               p.ln1_b + l * E, N, E);

    // attention between rows: every row queries the train rows
    matmul_forward(la.ra_qkv, la.ln1, p.ra_in_w + (long)l * 3 * E * E, p.ra_in_b + l * 3 * E, N, E, 3 * E);
    row_attention_set_batch(&model->row_attn[l], B, R, C, S, model->S_global, model->T_global);
    row_attention_forward(&model->row_attn[l], la.ra_o, la.ra_lse, la.ra_qkv);
    matmul_forward(la.ra_res, la.ra_o, p.ra_out_w + (long)l * E * E, p.ra_out_b + l * E, N, E, E);
    residual_layernorm_forward(la.ra_res, la.ln2, la.ln2_mean, la.ln2_rstd, la.ra_res, la.ln1, p.ln2_w + l * E,
                               p.ln2_b + l * E, N, E);

    // MLP
    matmul_forward(la.fc1, la.ln2, p.fc1_w + (long)l * H * E, p.fc1_b + l * H, N, E, H);
    gelu_forward(la.fc1_gelu, la.fc1, N * H);
    matmul_forward(la.mlp_res, la.fc1_gelu, p.fc2_w + (long)l * E * H, p.fc2_b + l * E, N, H, E);
    residual_layernorm_forward(la.mlp_res, la.ln3, la.ln3_mean, la.ln3_rstd, la.mlp_res, la.ln2, p.ln3_w + l * E,
                               p.ln3_b + l * E, N, E);
}

// the pruned last layer l: x (N, E) in, the test rows' target cells (B*T, E) out into dec_in
static void last_layer_target_forward(TabPFN* model, int l, const float* x, float* dec_in) {
    const TabPFNConfig c = model->config;
    const int B = model->B, R = model->R, C = model->F + 1, S = model->S;
    const int E = c.E, H = c.H, h = c.heads;
    const long N = (long)B * R * C, BR = (long)B * R, BT = (long)B * (R - S);
    const ParameterTensors p = model->params;
    const LayerActivations la = layer_activations(model, l);
    const TargetLayerActivations t = target_layer_activations(&la, N, BR, E);
    const float* w_in = p.fa_in_w + (long)l * 3 * E * E; // rows [0, E) q, [E, 3E) k and v
    const float* b_in = p.fa_in_b + l * 3 * E;

    // feature attention: keys and values from every cell, queries from the target cell
    matmul_forward(t.fa_kv, x, w_in + (long)E * E, b_in + E, N, E, 2 * E);
    gather_target_test_rows(t.xt, x, B, R, C, 0, E);
    matmul_forward(t.fa_q, t.xt, w_in, b_in, BR, E, E);
    feature_attention_target_forward(la.fa_o, la.fa_lse, t.fa_q, t.fa_kv, B, R, C, E, h);
    matmul_forward(t.fa_res_t, la.fa_o, p.fa_out_w + (long)l * E * E, p.fa_out_b + l * E, BR, E, E);
    residual_layernorm_forward(t.fa_res_t, t.ln1_t, la.ln1_mean, la.ln1_rstd, t.fa_res_t, t.xt, p.ln1_w + l * E,
                               p.ln1_b + l * E, BR, E);

    // row attention on the target column: a table of one column
    matmul_forward(t.ra_qkv_t, t.ln1_t, p.ra_in_w + (long)l * 3 * E * E, p.ra_in_b + l * 3 * E, BR, E, 3 * E);
    row_attention_set_batch(&model->row_attn[l], B, R, 1, S, model->S_global, model->T_global);
    row_attention_forward(&model->row_attn[l], t.ra_o_t, la.ra_lse, t.ra_qkv_t);
    gather_target_test_rows(t.ra_o_test, t.ra_o_t, B, R, 1, S, E);
    matmul_forward(t.ra_res_t, t.ra_o_test, p.ra_out_w + (long)l * E * E, p.ra_out_b + l * E, BT, E, E);
    gather_target_test_rows(t.ln1_test, t.ln1_t, B, R, 1, S, E);
    residual_layernorm_forward(t.ra_res_t, t.ln2_t, la.ln2_mean, la.ln2_rstd, t.ra_res_t, t.ln1_test, p.ln2_w + l * E,
                               p.ln2_b + l * E, BT, E);

    // MLP on the test rows' target cells (mlp_res_t overwrites ln1_test, read above)
    matmul_forward(t.fc1_t, t.ln2_t, p.fc1_w + (long)l * H * E, p.fc1_b + l * H, BT, E, H);
    gelu_forward(t.fc1_gelu_t, t.fc1_t, BT * H);
    matmul_forward(t.mlp_res_t, t.fc1_gelu_t, p.fc2_w + (long)l * E * H, p.fc2_b + l * E, BT, H, E);
    residual_layernorm_forward(t.mlp_res_t, dec_in, la.ln3_mean, la.ln3_rstd, t.mlp_res_t, t.ln2_t, p.ln3_w + l * E,
                               p.ln3_b + l * E, BT, E);
}

static void tabpfn_forward(TabPFN* model) {
    const TabPFNConfig c = model->config;
    const int B = model->B, R = model->R, F = model->F, S = model->S, C = F + 1;
    const int E = c.E, H = c.H, K = c.outputs;
    const long T = (long)B * (R - S);
    const ParameterTensors p = model->params;
    const ActivationTensors a = model->acts;

    // encoders: train statistics are summed over the sequence group before use
    // two passes (see feature_stats_local): [count, sum] and label sums, then squared deviations
    double* feature_stats = model->stats;                        // (B, F, 2)
    double* label_stats = model->stats + (long)B * F * 2;        // (B, 2)
    double* feature_m2 = model->stats + (long)B * F * 2 + B * 2; // (B, F)
    feature_stats_local(feature_stats, model->x, B, R, F, S);
    label_stats_local(label_stats, model->y, B, R, S);
    comm_allreduce_sum_double(model->seq_comm, model->stats, (size_t)B * (F * 2 + 2));
    feature_deviations_local(feature_m2, model->x, feature_stats, B, R, F, S);
    comm_allreduce_sum_double(model->seq_comm, feature_m2, (size_t)B * F);
    feature_normalize(a.xnorm, model->x, feature_stats, feature_m2, B, R, F);
    target_fill(a.ynorm, model->y, label_stats, B, R, S);
    scalar_embed_forward(a.encoded, a.xnorm, p.fe_w, p.fe_b, (long)B * R, F, 0, C, E);
    scalar_embed_forward(a.encoded, a.ynorm, p.te_w, p.te_b, (long)B * R, 1, F, C, E);

    // the layers; the decoder reads the target column of the test rows
    const int pruned = tabpfn_prunes_last_layer(model);
    const float* x = a.encoded; // (N, E) layer input
    for (int l = 0; l < c.L; l++) {
        if (l == c.L - 1 && pruned) {
            last_layer_target_forward(model, l, x, a.dec_in);
        } else {
            layer_forward(model, l, x);
            x = layer_activations(model, l).ln3;
        }
    }
    if (!pruned) gather_target_test_rows(a.dec_in, x, B, R, C, S, E);

    // decoder, then the loss
    matmul_forward(a.dec_h, a.dec_in, p.dec1_w, p.dec1_b, T, E, H);
    gelu_forward(a.dec_gelu, a.dec_h, T * H);
    matmul_forward(a.logits, a.dec_gelu, p.dec2_w, p.dec2_b, T, H, K);
    crossentropy_forward(a.loss_sum, a.probs, a.logits, model->y, B, R, S, K);

    // the loss is a mean over the test rows of every rank (host numbers: a host collective)
    double loss_and_count[2];
    float loss_sum;
    device_copy_to_host(&loss_sum, a.loss_sum, sizeof(float));
    loss_and_count[0] = loss_sum;
    loss_and_count[1] = (double)T;
    comm_host_allreduce_sum_double(model->world_comm, loss_and_count, 2);
    model->num_test_rows = loss_and_count[1];
    model->mean_loss = (float)(loss_and_count[0] / loss_and_count[1]);
}

// ----------------------------------------------------------------------------
// backward: the forward in reverse. Parameter gradients accumulate into model->grads,
// which tabpfn_zero_grad clears.

static void tabpfn_zero_grad(TabPFN* model) {
    device_memset_zero(model->grads_memory, model->num_parameters * sizeof(float));
}

// layer l on every cell: d.dx (N, E) holds the gradient of its output and gets that of its
// input x (N, E)
static void layer_backward(TabPFN* model, int l, const float* x) {
    const TabPFNConfig c = model->config;
    const int B = model->B, R = model->R, C = model->F + 1;
    const int E = c.E, H = c.H, h = c.heads;
    const long N = (long)B * R * C;
    const ParameterTensors p = model->params;
    const ParameterTensors g = model->grads;
    const GradActTensors d = model->dacts;
    const LayerActivations la = layer_activations(model, l);

    // LayerNorm3 and MLP: d(ln2) = dres + MLP'(dres)
    layernorm_backward(d.dres, g.ln3_w + l * E, g.ln3_b + l * E, d.dx, la.mlp_res, p.ln3_w + l * E, la.ln3_mean,
                       la.ln3_rstd, N, E);
    matmul_backward(d.dh_gelu, g.fc2_w + (long)l * E * H, g.fc2_b + l * E, d.dres, la.fc1_gelu, p.fc2_w + (long)l * E * H,
                    N, H, E);
    gelu_backward(d.dh, la.fc1, d.dh_gelu, N * H);
    matmul_backward(d.dtmp, g.fc1_w + (long)l * H * E, g.fc1_b + l * H, d.dh, la.ln2, p.fc1_w + (long)l * H * E, N, E, H);
    residual_forward(d.dx, d.dres, d.dtmp, N * E);

    // LayerNorm2 and row attention: d(ln1) = dres + attention'(dres)
    layernorm_backward(d.dres, g.ln2_w + l * E, g.ln2_b + l * E, d.dx, la.ra_res, p.ln2_w + l * E, la.ln2_mean,
                       la.ln2_rstd, N, E);
    matmul_backward(d.dattn, g.ra_out_w + (long)l * E * E, g.ra_out_b + l * E, d.dres, la.ra_o,
                    p.ra_out_w + (long)l * E * E, N, E, E);
    row_attention_backward(&model->row_attn[l], d.dqkv, d.dattn, la.ra_o, la.ra_lse, la.ra_qkv);
    matmul_backward(d.dtmp, g.ra_in_w + (long)l * 3 * E * E, g.ra_in_b + l * 3 * E, d.dqkv, la.ln1,
                    p.ra_in_w + (long)l * 3 * E * E, N, E, 3 * E);
    residual_forward(d.dx, d.dres, d.dtmp, N * E);

    // LayerNorm1 and feature attention: d(x) = dres + attention'(dres)
    layernorm_backward(d.dres, g.ln1_w + l * E, g.ln1_b + l * E, d.dx, la.fa_res, p.ln1_w + l * E, la.ln1_mean,
                       la.ln1_rstd, N, E);
    matmul_backward(d.dattn, g.fa_out_w + (long)l * E * E, g.fa_out_b + l * E, d.dres, la.fa_o,
                    p.fa_out_w + (long)l * E * E, N, E, E);
    feature_attention_backward(d.dqkv, d.dattn, la.fa_o, la.fa_lse, la.fa_qkv, B, R, C, E, h);
    matmul_backward(d.dtmp, g.fa_in_w + (long)l * 3 * E * E, g.fa_in_b + l * 3 * E, d.dqkv, x,
                    p.fa_in_w + (long)l * 3 * E * E, N, E, 3 * E);
    residual_forward(d.dx, d.dres, d.dtmp, N * E);
}

// the pruned last layer l in reverse: ddec_in (B*T, E) holds the gradient of its output, d.dx
// (N, E) gets that of its input x. Buffers: d.dx, d.dres, d.dtmp hold (B*T, E) then (B*R, E)
// pieces; d.dqkv holds dkv (B, R, C, 2E) then dq (B*R, E).
static void last_layer_target_backward(TabPFN* model, int l, const float* x, const float* ddec_in) {
    const TabPFNConfig c = model->config;
    const int B = model->B, R = model->R, C = model->F + 1, S = model->S;
    const int E = c.E, H = c.H, h = c.heads;
    const long N = (long)B * R * C, BR = (long)B * R, BT = (long)B * (R - S);
    const ParameterTensors p = model->params;
    const ParameterTensors g = model->grads;
    const GradActTensors d = model->dacts;
    const LayerActivations la = layer_activations(model, l);
    const TargetLayerActivations t = target_layer_activations(&la, N, BR, E);
    float* dkv = d.dqkv;               // (B, R, C, 2E)
    float* dq = d.dqkv + N * 2 * E;    // (B*R, E)

    // LayerNorm3 and MLP on the test rows' target cells: d(ln2_t) into d.dx (B*T, E)
    layernorm_backward(d.dres, g.ln3_w + l * E, g.ln3_b + l * E, ddec_in, t.mlp_res_t, p.ln3_w + l * E, la.ln3_mean,
                       la.ln3_rstd, BT, E);
    matmul_backward(d.dh_gelu, g.fc2_w + (long)l * E * H, g.fc2_b + l * E, d.dres, t.fc1_gelu_t,
                    p.fc2_w + (long)l * E * H, BT, H, E);
    gelu_backward(d.dh, t.fc1_t, d.dh_gelu, BT * H);
    matmul_backward(d.dtmp, g.fc1_w + (long)l * H * E, g.fc1_b + l * H, d.dh, t.ln2_t, p.fc1_w + (long)l * H * E, BT, E,
                    H);
    residual_forward(d.dx, d.dres, d.dtmp, BT * E);

    // LayerNorm2 and the one-column row attention: d(ln1_t) (B*R, E) into d.dtmp
    layernorm_backward(d.dres, g.ln2_w + l * E, g.ln2_b + l * E, d.dx, t.ra_res_t, p.ln2_w + l * E, la.ln2_mean,
                       la.ln2_rstd, BT, E);
    matmul_backward(d.dtmp, g.ra_out_w + (long)l * E * E, g.ra_out_b + l * E, d.dres, t.ra_o_test,
                    p.ra_out_w + (long)l * E * E, BT, E, E);
    scatter_target_test_rows(d.dattn, d.dtmp, B, R, 1, S, E); // train rows' outputs reach nothing
    row_attention_backward(&model->row_attn[l], d.dqkv, d.dattn, t.ra_o_t, la.ra_lse, t.ra_qkv_t);
    matmul_backward(d.dtmp, g.ra_in_w + (long)l * 3 * E * E, g.ra_in_b + l * 3 * E, d.dqkv, t.ln1_t,
                    p.ra_in_w + (long)l * 3 * E * E, BR, E, 3 * E);
    add_target_test_rows(d.dtmp, d.dres, B, R, 1, S, E); // the residual, test rows only

    // LayerNorm1 and the target-query feature attention: d(x) (N, E) into d.dx
    layernorm_backward(d.dres, g.ln1_w + l * E, g.ln1_b + l * E, d.dtmp, t.fa_res_t, p.ln1_w + l * E, la.ln1_mean,
                       la.ln1_rstd, BR, E);
    matmul_backward(d.dattn, g.fa_out_w + (long)l * E * E, g.fa_out_b + l * E, d.dres, la.fa_o,
                    p.fa_out_w + (long)l * E * E, BR, E, E);
    feature_attention_target_backward(dq, dkv, d.dattn, la.fa_o, la.fa_lse, t.fa_q, t.fa_kv, B, R, C, E, h);
    const float* w_in = p.fa_in_w + (long)l * 3 * E * E;
    float* gw_in = g.fa_in_w + (long)l * 3 * E * E;
    float* gb_in = g.fa_in_b + l * 3 * E;
    matmul_backward(d.dx, gw_in + (long)E * E, gb_in + E, dkv, x, w_in + (long)E * E, N, E, 2 * E);
    matmul_backward(d.dtmp, gw_in, gb_in, dq, t.xt, w_in, BR, E, E);
    add_inplace(d.dtmp, d.dres, BR * E); // the residual into the target cells
    add_target_test_rows(d.dx, d.dtmp, B, R, C, 0, E);
}

static void tabpfn_backward(TabPFN* model) {
    MOSAIC_CHECK(model->grads_memory != NULL, "model built without training buffers (train = 0)");
    const TabPFNConfig c = model->config;
    const int B = model->B, R = model->R, F = model->F, S = model->S, C = F + 1;
    const int E = c.E, H = c.H, K = c.outputs;
    const long T = (long)B * (R - S);
    const ParameterTensors p = model->params;
    const ParameterTensors g = model->grads;
    const ActivationTensors a = model->acts;
    const GradActTensors d = model->dacts;

    // loss and decoder
    crossentropy_backward(d.dlogits, a.probs, model->y, (float)(1.0 / model->num_test_rows), B, R, S, K);
    matmul_backward(d.ddec_gelu, g.dec2_w, g.dec2_b, d.dlogits, a.dec_gelu, p.dec2_w, T, H, K);
    gelu_backward(d.ddec_h, a.dec_h, d.ddec_gelu, T * H);
    matmul_backward(d.ddec_in, g.dec1_w, g.dec1_b, d.ddec_h, a.dec_in, p.dec1_w, T, E, H);

    const int pruned = tabpfn_prunes_last_layer(model);
    if (!pruned) scatter_target_test_rows(d.dx, d.ddec_in, B, R, C, S, E);
    for (int l = c.L - 1; l >= 0; l--) {
        const float* x = l == 0 ? a.encoded : layer_activations(model, l - 1).ln3; // this layer's input
        if (l == c.L - 1 && pruned) last_layer_target_backward(model, l, x, d.ddec_in);
        else layer_backward(model, l, x);
    }

    // encoders: the inputs are data, so only the Linear(1 -> E) weights get gradients
    scalar_embed_backward(g.fe_w, g.fe_b, d.dx, a.xnorm, (long)B * R, F, 0, C, E);
    scalar_embed_backward(g.te_w, g.te_b, d.dx, a.ynorm, (long)B * R, 1, F, C, E);

    // parameters are replicated: sum their gradients over every rank, once per step, in
    // buckets so that one call never exceeds what the transport takes at once
    const size_t bucket = (size_t)1 << 22;
    for (size_t off = 0; off < model->num_parameters; off += bucket) {
        size_t n = model->num_parameters - off < bucket ? model->num_parameters - off : bucket;
        comm_allreduce_sum(model->world_comm, model->grads_memory + off, n);
    }
}

// ----------------------------------------------------------------------------
// optimizer

enum OptimizerKind { OPT_ADAMW = 0, OPT_SCHEDULEFREE = 1 };
static const char* const optimizer_names[] = {"adamw", "schedulefree"};

typedef struct {
    float lr_max;       // peak learning rate
    int warmup_steps;   // linear warmup
    int total_steps;    // AdamW: cosine decay to 0 at the end (schedule-free has no schedule)
    float weight_decay; // decoupled: AdamW at the parameters, schedule-free at y
    float beta1, beta2, eps;
    float clip_norm;    // global gradient norm cap; <= 0 disables clipping
    int kind;           // OptimizerKind (0: AdamW)
} OptimizerConfig;

// step counts from 0; linear warmup to lr_max, then (AdamW) half a cosine down to 0 or
// (schedule-free) constant. Schedule-free's step size also carries Adam's bias correction,
// sqrt(1 - beta2^t), applied in tabpfn_update.
static inline float learning_rate_at(const OptimizerConfig* o, int step) {
    if (step < o->warmup_steps) return o->lr_max * (float)(step + 1) / (float)o->warmup_steps;
    if (o->kind == OPT_SCHEDULEFREE) return o->lr_max;
    int decay_steps = o->total_steps - o->warmup_steps;
    if (decay_steps < 1) decay_steps = 1;
    double progress = (double)(step - o->warmup_steps) / decay_steps;
    return (float)(o->lr_max * 0.5 * (1.0 + cos(M_PI * progress)));
}

// Starts the optimizer's state at the current parameters: AdamW's moments at 0; schedule-free
// with z = x = y (the paper's z_1 = x_1), v = 0 and no steps taken. Call it after the
// parameters are set (tabpfn_init_parameters) and before checkpoint_load, which overwrites it.
static void tabpfn_optimizer_init(TabPFN* model, int kind) {
    MOSAIC_CHECK(model->opt_memory != NULL, "tabpfn_optimizer_init needs a model built for training");
    const size_t P = model->num_parameters;
    model->optimizer = kind;
    model->lr_sq_sum = 0.0;
    device_memset_zero(model->opt_memory, 3 * P * sizeof(float));
    if (kind == OPT_SCHEDULEFREE) {
        device_copy(model->z_memory, model->params_memory, P * sizeof(float));
        device_copy(model->avg_memory, model->params_memory, P * sizeof(float));
    }
}

// The weights the forward pass reads (model->params). Schedule-free trains at y
// (params_memory) and is evaluated at x (avg_memory): tabpfn_eval_weights points the
// parameters at x, tabpfn_train_weights back at y. Nothing is copied, so training continues
// at y bit for bit. AdamW evaluates what it trains: both are the same.
static const float* tabpfn_eval_weights_memory(const TabPFN* model) {
    return model->optimizer == OPT_SCHEDULEFREE && model->avg_memory ? model->avg_memory : model->params_memory;
}
static void tabpfn_eval_weights(TabPFN* model) {
    point_parameters(&model->params, (float*)tabpfn_eval_weights_memory(model), model->param_sizes);
}
static void tabpfn_train_weights(TabPFN* model) {
    point_parameters(&model->params, model->params_memory, model->param_sizes);
}

// clip by global norm (as torch.nn.utils.clip_grad_norm_), then one step of the optimizer the
// state was started for (tabpfn_optimizer_init; a model never started runs AdamW). Returns
// the norm before clipping. step counts from 0.
static float tabpfn_update(TabPFN* model, const OptimizerConfig* o, int step) {
    MOSAIC_CHECK(o->kind == model->optimizer, "the optimizer state was started for another optimizer");
    double sumsq;
    sum_of_squares(model->grad_sumsq, model->grads_memory, model->num_parameters);
    device_copy_to_host(&sumsq, model->grad_sumsq, sizeof(double));
    float norm = (float)sqrt(sumsq);
    float scale = 1.0f;
    if (o->clip_norm > 0.0f) {
        float coef = o->clip_norm / (norm + 1e-6f);
        scale = coef < 1.0f ? coef : 1.0f;
    }
    if (o->kind == OPT_SCHEDULEFREE) {
        // the paper's lr_t = lr sqrt(1 - beta2^t) min(1, t / warmup), and the weight of z_{t+1}
        // in the average x: c_{t+1} = lr_t^2 / sum_{i <= t} lr_i^2 (its weighting with r = 0)
        const double lr_t = (double)learning_rate_at(o, step) * sqrt(1.0 - pow((double)o->beta2, step + 1));
        model->lr_sq_sum += lr_t * lr_t;
        const double c = model->lr_sq_sum > 0.0 ? lr_t * lr_t / model->lr_sq_sum : 0.0;
        schedulefree_update(model->params_memory, model->z_memory, model->avg_memory, model->v_memory,
                            model->grads_memory, model->num_parameters, (float)lr_t, (float)c, o->beta1, o->beta2,
                            o->eps, o->weight_decay, scale);
    } else {
        adamw_update(model->params_memory, model->m_memory, model->v_memory, model->grads_memory,
                     model->num_parameters, learning_rate_at(o, step), o->beta1, o->beta2, o->eps, o->weight_decay,
                     scale, step + 1);
    }
    return norm;
}
