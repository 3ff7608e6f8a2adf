// Mosaic trainer: a nanoTabPFN-style tabular transformer, trained on a built-in synthetic
// prior (or prior dumps), evaluated on a real table (ROC-AUC, accuracy), checkpointed.
//
// One training step, top to bottom (see main):
//   1. draw a batch of B tables (prior or dump) into host memory
//   2. copy it to the device (tabpfn_upload_batch)
//   3. forward: encoders -> L x (feature attention, row attention, MLP) -> decoder -> loss
//   4. backward: the same in reverse, parameter gradients accumulate
//   5. update: clip by global norm, AdamW with warmup + cosine learning rate
// Under mpirun the world is dp data-parallel groups of sp ranks: every rank draws the same
// global batch, keeps its datasets (by group) and its share of their rows (by rank), and the
// row attention of each layer exchanges K/V (or Q, or problems) with the group's other ranks
// by the strategy chosen for that layer (attention/row_*.h). Gradients are summed over all
// ranks once per step, so every rank applies the same update to its replica.
// Build: make train_tabpfn (CPU: g++ with OpenMP + OpenBLAS + MPI). Run ./train_tabpfn --help.
// The same file is the GPU trainer: make train_tabpfn_cuda (nvcc, -DMOSAIC_CUDA: CUDA leaf ops,
// cuBLAS, the NCCL transport of comm/comm_nccl.h) and, for CI, make train_tabpfn_emulated (the
// CUDA build run on the CPU through test/simt_emulator.h and test-only CUDA/cuBLAS/NCCL shims).
#include <signal.h>
#include <unistd.h>
#include <sys/resource.h>
#include "model/common.h"
#include "model/tabpfn.h"
#include "model/model_file.h"
#include "comm/comm.h"
#include "dataloader/table_batch.h"
#include "dataloader/prior.h"
#include "dataloader/prior_dump.h"
#include "dataloader/csv_table.h"
#include "dataloader/shard_batch.h"
#include "attention/row_cost_model.h"

// ----------------------------------------------------------------------------
// flags

typedef struct {
    // data
    const char* prior_dump; // NULL: the built-in prior
    PriorConfig prior;
    // model
    TabPFNConfig model;
    // optimisation
    int batch;
    int steps;
    OptimizerConfig opt;
    uint64_t seed;
    // evaluation
    const char* eval_csv; // NULL: no evaluation
    int eval_every;       // 0: only at the end
    uint64_t eval_seed;
    // files
    const char* log_path;
    const char* checkpoint_path;
    int checkpoint_every;
    int stop_at; // end this run after this step (with a checkpoint), as a time-limited job would
    const char* resume_path;
    const char* export_path;
    const char* write_prior_dump; // write datasets from the built-in prior, then exit
    int dump_datasets;
    int threads;
    int quiet; // print every step (0) or only every 50th
    // parallel layout, under mpirun
    int dp, sp;              // data-parallel groups x ranks per group (0: dp 1, sp the world)
    const char* row_attn;    // row-attention strategy, or one per layer separated by commas
    int mesh_r, mesh_c;      // grid of the sp ranks for mesh2d / composed (0: the squarest)
    int ranks_per_node;      // hierarchical: 0 = from MPI's shared-memory split
    RowStrategy inner, outer; // composed / hierarchical: strategy per grid dimension
    int no_overlap;          // wait for each transfer at once (to measure what overlap hides)
    int fail_rank, fail_step; // testing: this rank dies during this step (-1: never)
    const char* fail_how;     // testing: "exit" (vanishes), "error" (reports and aborts), "kill" (SIGKILL)
} TrainArgs;

static void train_args_default(TrainArgs* a) {
    memset(a, 0, sizeof(*a));
    a->prior = prior_config_default();
    a->model = tabpfn_config_default();
    a->batch = 32;
    a->steps = 2500;
    // nanoTabPFN uses 4e-3 with schedule-free AdamW; with plain AdamW 4e-3 stalls near ln 2
    // (measured here, and the same in the PyTorch reference), 1e-3 learns
    a->opt.lr_max = 1e-3f;
    a->opt.warmup_steps = 100;
    a->opt.weight_decay = 0.0f;
    a->opt.beta1 = 0.9f;
    a->opt.beta2 = 0.999f;
    a->opt.eps = 1e-8f;
    a->opt.clip_norm = 1.0f;
    a->seed = 0;
    a->eval_csv = "data/breast_cancer.csv";
    a->eval_every = 500;
    a->eval_seed = 0;
    a->checkpoint_every = 500;
    a->dump_datasets = 1024;
    a->row_attn = "auto";
    a->inner = ROW_A2A;
    a->outer = ROW_RING;
    a->fail_rank = -1;
    a->fail_step = -1;
    a->fail_how = "exit";
}

static void print_usage(const TrainArgs* d) {
    printf("usage: train_tabpfn [flags]\n"
           "Trains a nanoTabPFN-style transformer on a synthetic prior, then evaluates it.\n\n"
           "data:\n"
           "  --prior-dump PATH        train on a prior dump file instead of the built-in prior\n"
           "  --min-rows N             built-in prior: fewest rows per table (%d)\n"
           "  --max-rows N             built-in prior: most rows per table (%d)\n"
           "  --min-features N         built-in prior: fewest features (%d)\n"
           "  --max-features N         built-in prior: most features (%d)\n"
           "  --classes N              built-in prior: classes per table (%d)\n"
           "  --min-train-fraction X   built-in prior: smallest share of train rows (%g)\n"
           "  --max-train-fraction X   built-in prior: largest share of train rows (%g)\n"
           "model:\n"
           "  --embed N                embedding size E (%d)\n"
           "  --heads N                attention heads (%d)\n"
           "  --hidden N               MLP hidden size (%d)\n"
           "  --layers N               transformer layers (%d)\n"
           "  --outputs N              classes the decoder scores (%d)\n"
           "training:\n"
           "  --batch N                tables per step (%d)\n"
           "  --steps N                optimizer steps (%d)\n"
           "  --lr X                   peak learning rate (%g)\n"
           "  --warmup-steps N         linear warmup, then cosine decay to 0 (%d)\n"
           "  --weight-decay X         AdamW decoupled weight decay (%g)\n"
           "  --clip X                 clip gradients to this global norm, 0 = off (%g)\n"
           "  --seed N                 seed for parameters and the prior (%llu)\n"
           "  --threads N              OpenMP/BLAS threads (all cores)\n"
           "evaluation:\n"
           "  --eval-csv PATH|none     table to evaluate on, label last (%s)\n"
           "  --eval-every N           evaluate every N steps, 0 = only at the end (%d)\n"
           "  --eval-seed N            seed of the stratified 50/50 split (%llu)\n"
           "files:\n"
           "  --log PATH               append per-step and eval lines to this file\n"
           "  --checkpoint PATH        save parameters + optimizer state here (atomically)\n"
           "  --checkpoint-every N     ... every N steps, at the end and on Ctrl-C (%d)\n"
           "  --stop-at N              end this run after step N with a checkpoint; --resume continues it\n"
           "  --resume PATH            continue from a checkpoint\n"
           "  --export PATH            write the trained parameters by PyTorch name (tensor file)\n"
           "  --write-prior-dump PATH  write --dump-datasets tables of the built-in prior to a dump file, then exit\n"
           "  --dump-datasets N        how many (%d)\n"
           "parallel (under mpirun; every rank takes the same flags):\n"
           "  --dp N                   data-parallel groups: datasets split over them (1)\n"
           "  --sp N                   ranks per group: rows split over them (world size / dp)\n"
           "  --row-attn S[,S...]      row attention: local, allgather, ring, mesh2d, a2a, composed,\n"
           "                           hierarchical or auto; one per layer with commas (%s)\n"
           "  --mesh RxC               grid of the sp ranks for mesh2d / composed (the squarest)\n"
           "  --ranks-per-node N       hierarchical: ranks per node (from MPI's shared-memory split)\n"
           "  --composed-inner S       composed/hierarchical, within a grid row: a2a or allgather (a2a)\n"
           "  --composed-outer S       composed/hierarchical, across grid rows: ring or allgather (ring)\n"
           "  --no-overlap             wait for every transfer at once (shows what overlap hides)\n"
           "  --debug-fail-rank R      testing: rank R dies mid-step at --debug-fail-step N,\n"
           "                           --debug-fail-how exit|error|kill|hang (exit; hang: stays alive,\n"
           "                           silent: the GPU build's device-wait deadline ends the job)\n"
           "  --quiet                  print every 50th step instead of every step\n"
           "  --help                   this text\n",
           d->prior.min_rows, d->prior.max_rows, d->prior.min_features, d->prior.max_features, d->prior.num_classes,
           d->prior.min_train_fraction, d->prior.max_train_fraction, d->model.E, d->model.heads, d->model.H,
           d->model.L, d->model.outputs, d->batch, d->steps, d->opt.lr_max, d->opt.warmup_steps,
           d->opt.weight_decay, d->opt.clip_norm, (unsigned long long)d->seed, d->eval_csv, d->eval_every,
           (unsigned long long)d->eval_seed, d->checkpoint_every, d->dump_datasets, d->row_attn);
}

static long parse_long_flag(const char* flag, const char* value, long lo, long hi) {
    char* end;
    errno = 0;
    long v = strtol(value, &end, 10);
    if (errno || *end != '\0' || end == value) mosaic_fail("%s expects an integer, got '%s'", flag, value);
    if (v < lo || v > hi) mosaic_fail("%s %ld is out of range [%ld, %ld]", flag, v, lo, hi);
    return v;
}

static float parse_float_flag(const char* flag, const char* value, double lo, double hi) {
    char* end;
    errno = 0;
    double v = strtod(value, &end);
    if (errno || *end != '\0' || end == value || !isfinite(v)) mosaic_fail("%s expects a number, got '%s'", flag, value);
    if (v < lo || v > hi) mosaic_fail("%s %g is out of range [%g, %g]", flag, v, lo, hi);
    return (float)v;
}

static void parse_args(TrainArgs* a, int argc, char** argv) {
    TrainArgs defaults;
    train_args_default(&defaults);
    for (int i = 1; i < argc; i++) {
        const char* f = argv[i];
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) { print_usage(&defaults); exit(0); }
        if (!strcmp(f, "--quiet")) { a->quiet = 1; continue; }
        if (!strcmp(f, "--no-overlap")) { a->no_overlap = 1; continue; }
        if (strncmp(f, "--", 2) != 0) mosaic_fail("unexpected argument '%s' (see --help)", f);
        if (i + 1 >= argc) mosaic_fail("%s needs a value (see --help)", f);
        const char* v = argv[++i];
        const long BIG = 1L << 30;
        if (!strcmp(f, "--prior-dump")) a->prior_dump = v;
        else if (!strcmp(f, "--min-rows")) a->prior.min_rows = (int)parse_long_flag(f, v, 3, BIG);
        else if (!strcmp(f, "--max-rows")) a->prior.max_rows = (int)parse_long_flag(f, v, 3, BIG);
        else if (!strcmp(f, "--min-features")) a->prior.min_features = (int)parse_long_flag(f, v, 1, 100000);
        else if (!strcmp(f, "--max-features")) a->prior.max_features = (int)parse_long_flag(f, v, 1, 100000);
        else if (!strcmp(f, "--classes")) a->prior.num_classes = (int)parse_long_flag(f, v, 2, 1000);
        else if (!strcmp(f, "--min-train-fraction")) a->prior.min_train_fraction = parse_float_flag(f, v, 0.0, 1.0);
        else if (!strcmp(f, "--max-train-fraction")) a->prior.max_train_fraction = parse_float_flag(f, v, 0.0, 1.0);
        else if (!strcmp(f, "--embed")) a->model.E = (int)parse_long_flag(f, v, 1, 65536);
        else if (!strcmp(f, "--heads")) a->model.heads = (int)parse_long_flag(f, v, 1, 4096);
        else if (!strcmp(f, "--hidden")) a->model.H = (int)parse_long_flag(f, v, 1, 1 << 20);
        else if (!strcmp(f, "--layers")) a->model.L = (int)parse_long_flag(f, v, 1, 1000);
        else if (!strcmp(f, "--outputs")) a->model.outputs = (int)parse_long_flag(f, v, 2, 1000);
        else if (!strcmp(f, "--batch")) a->batch = (int)parse_long_flag(f, v, 1, 1 << 20);
        else if (!strcmp(f, "--steps")) a->steps = (int)parse_long_flag(f, v, 0, BIG);
        else if (!strcmp(f, "--lr")) a->opt.lr_max = parse_float_flag(f, v, 0.0, 10.0);
        else if (!strcmp(f, "--warmup-steps")) a->opt.warmup_steps = (int)parse_long_flag(f, v, 0, BIG);
        else if (!strcmp(f, "--weight-decay")) a->opt.weight_decay = parse_float_flag(f, v, 0.0, 10.0);
        else if (!strcmp(f, "--clip")) a->opt.clip_norm = parse_float_flag(f, v, 0.0, 1e9);
        else if (!strcmp(f, "--seed")) a->seed = (uint64_t)parse_long_flag(f, v, 0, BIG * 2 - 1);
        else if (!strcmp(f, "--threads")) a->threads = (int)parse_long_flag(f, v, 1, 4096);
        else if (!strcmp(f, "--eval-csv")) a->eval_csv = strcmp(v, "none") ? v : NULL;
        else if (!strcmp(f, "--eval-every")) a->eval_every = (int)parse_long_flag(f, v, 0, BIG);
        else if (!strcmp(f, "--eval-seed")) a->eval_seed = (uint64_t)parse_long_flag(f, v, 0, BIG * 2 - 1);
        else if (!strcmp(f, "--log")) a->log_path = v;
        else if (!strcmp(f, "--checkpoint")) a->checkpoint_path = v;
        else if (!strcmp(f, "--checkpoint-every")) a->checkpoint_every = (int)parse_long_flag(f, v, 0, BIG);
        else if (!strcmp(f, "--resume")) a->resume_path = v;
        else if (!strcmp(f, "--stop-at")) a->stop_at = (int)parse_long_flag(f, v, 1, BIG);
        else if (!strcmp(f, "--export")) a->export_path = v;
        else if (!strcmp(f, "--write-prior-dump")) a->write_prior_dump = v;
        else if (!strcmp(f, "--dump-datasets")) a->dump_datasets = (int)parse_long_flag(f, v, 1, BIG);
        else if (!strcmp(f, "--dp")) a->dp = (int)parse_long_flag(f, v, 1, 1 << 20);
        else if (!strcmp(f, "--sp")) a->sp = (int)parse_long_flag(f, v, 1, 1 << 20);
        else if (!strcmp(f, "--row-attn")) a->row_attn = v;
        else if (!strcmp(f, "--mesh")) {
            if (sscanf(v, "%dx%d", &a->mesh_r, &a->mesh_c) != 2 || a->mesh_r < 1 || a->mesh_c < 1)
                mosaic_fail("--mesh expects RxC with positive R and C, got '%s'", v);
        }
        else if (!strcmp(f, "--ranks-per-node")) a->ranks_per_node = (int)parse_long_flag(f, v, 1, 1 << 20);
        else if (!strcmp(f, "--composed-inner") || !strcmp(f, "--composed-outer")) {
            int st = row_strategy_from_name(v);
            int inner = !strcmp(f, "--composed-inner");
            if (inner ? (st != ROW_A2A && st != ROW_ALLGATHER) : (st != ROW_RING && st != ROW_ALLGATHER))
                mosaic_fail("%s takes %s, got '%s'", f, inner ? "a2a or allgather" : "ring or allgather", v);
            if (inner) a->inner = (RowStrategy)st;
            else a->outer = (RowStrategy)st;
        }
        else if (!strcmp(f, "--debug-fail-rank")) a->fail_rank = (int)parse_long_flag(f, v, 0, 1 << 20);
        else if (!strcmp(f, "--debug-fail-step")) a->fail_step = (int)parse_long_flag(f, v, 1, BIG);
        else if (!strcmp(f, "--debug-fail-how")) {
            if (strcmp(v, "exit") && strcmp(v, "error") && strcmp(v, "kill") && strcmp(v, "hang"))
                mosaic_fail("--debug-fail-how takes exit, error, kill or hang, got '%s'", v);
            a->fail_how = v;
        }
        else mosaic_fail("unknown flag '%s' (see --help)", f);
    }
    PriorConfig* p = &a->prior;
    if (p->min_rows > p->max_rows) mosaic_fail("--min-rows %d is above --max-rows %d", p->min_rows, p->max_rows);
    if (p->min_features > p->max_features) mosaic_fail("--min-features %d is above --max-features %d", p->min_features, p->max_features);
    if (p->min_train_fraction > p->max_train_fraction) mosaic_fail("--min-train-fraction is above --max-train-fraction");
    if (!a->prior_dump && p->num_classes > a->model.outputs)
        mosaic_fail("--classes %d exceeds --outputs %d: the decoder could not score every class", p->num_classes, a->model.outputs);
    if (a->opt.warmup_steps > a->steps && a->steps > 0) a->opt.warmup_steps = a->steps;
    a->opt.total_steps = a->steps;
    tabpfn_validate_config(a->model);
}

// samples datasets from the built-in prior into a prior dump (for tests and for sharing a
// fixed training set); batch by batch, so any count fits in memory
static void write_prior_dump(const TrainArgs* args) {
    Prior prior;
    prior_init(&prior, args->prior, args->seed);
    TableBatch batch;
    table_batch_alloc(&batch, args->batch, args->prior.max_rows, args->prior.max_features);
    PriorDumpWriter writer;
    prior_dump_writer_open(&writer, args->write_prior_dump, args->dump_datasets, args->prior.max_rows,
                           args->prior.max_features, args->prior.num_classes);
    int written = 0;
    while (written < args->dump_datasets) {
        prior_sample_batch(&batch, &prior, args->batch);
        written += prior_dump_writer_append(&writer, &batch);
    }
    prior_dump_writer_close(&writer);
    printf("wrote %d datasets of the built-in prior (seed %llu) to '%s'\n", written, (unsigned long long)args->seed,
           args->write_prior_dump);
    table_batch_free(&batch);
    prior_free(&prior);
}

// ----------------------------------------------------------------------------
// evaluation on a real table: stratified 50/50 split, train rows as context

typedef struct {
    double roc_auc;  // class 1 vs rest, from P(class 1); ties get the average rank
    double accuracy; // argmax over the table's classes
} EvalResult;

// area under the ROC curve via the Mann-Whitney statistic; scores and labels (n)
static double roc_auc(const float* scores, const int* positive, int n) {
    int* order = (int*)mallocCheck(n * sizeof(int));
    for (int i = 0; i < n; i++) order[i] = i;
    // insertion sort is plenty for a few hundred test rows and keeps this dependency-free
    for (int i = 1; i < n; i++) {
        int k = order[i], j = i - 1;
        while (j >= 0 && scores[order[j]] > scores[k]) { order[j + 1] = order[j]; j--; }
        order[j + 1] = k;
    }
    double rank_sum = 0.0;
    long n_pos = 0;
    for (int i = 0; i < n;) {
        int j = i;
        while (j + 1 < n && scores[order[j + 1]] == scores[order[i]]) j++;
        double avg_rank = 0.5 * (i + j) + 1.0;
        for (int k = i; k <= j; k++)
            if (positive[order[k]]) { rank_sum += avg_rank; n_pos++; }
        i = j + 1;
    }
    free(order);
    long n_neg = n - n_pos;
    if (n_pos == 0 || n_neg == 0) return NAN;
    return (rank_sum - 0.5 * n_pos * (n_pos + 1)) / ((double)n_pos * n_neg);
}

// the table is split 50/50 (stratified) and sharded over the seq group like a training
// batch; the test rows' probabilities are then gathered, so every rank scores all of them
static EvalResult evaluate(TabPFN* model, const CsvTable* table, TableBatch* global, TableBatch* local, Comm* seq,
                           uint64_t seed) {
    csv_table_stratified_split(global, table, 0.5f, seed);
    const int p = seq->size, k = seq->rank, S = global->S, T = global->R - global->S;
    shard_batch(local, global, 0, 1, p, k);
    tabpfn_upload_batch(model, local->x, local->y, local->B, local->R, local->F, local->S);
    tabpfn_set_global_rows(model, S, T);
    tabpfn_forward(model);
    const int K = model->config.outputs, classes = table->num_classes, t_max = share_count(T, p, 0);
    float* mine = (float*)callocCheck((size_t)t_max * K * sizeof(float));
    float* all = (float*)mallocCheck((size_t)p * t_max * K * sizeof(float));
    device_copy_to_host(mine, model->acts.probs, (size_t)share_count(T, p, k) * K * sizeof(float));
    comm_host_allgather(seq, all, mine, (size_t)t_max * K);
    float* score = (float*)mallocCheck(T * sizeof(float));
    int* positive = (int*)mallocCheck(T * sizeof(int));
    int correct = 0;
    for (int r = 0; r < p; r++)
        for (int j = 0; j < share_count(T, p, r); j++) {
            const int i = share_start(T, p, r) + j; // test row i of the whole table
            // only the table's classes compete, renormalised, as nanoTabPFN's classifier does
            const float* pr = all + ((size_t)r * t_max + j) * K;
            double total = 0.0;
            int best = 0;
            for (int c = 0; c < classes; c++) {
                total += pr[c];
                if (pr[c] > pr[best]) best = c;
            }
            const int label = (int)global->y[S + i];
            correct += best == label;
            score[i] = (float)(pr[1] / total);
            positive[i] = label == 1;
        }
    EvalResult r = {roc_auc(score, positive, T), (double)correct / T};
    free(mine);
    free(all);
    free(score);
    free(positive);
    return r;
}

// ----------------------------------------------------------------------------
// the parallel layout: groups, grid, and the row-attention strategy of every layer

typedef struct {
    Comm world;    // every rank
    Comm seq;      // the sp ranks sharing the rows of the same datasets
    Comm mesh_row; // grid row of the seq group (c ranks), for the 2-D strategies
    Comm mesh_col; // grid column (r ranks)
    int dp, sp, dp_index, seq_rank;
    int mesh_r, mesh_c, ranks_per_node;
    RowStrategy* row_strategy; // (L)
    RowCostInput cost;         // sizes the cost model was fed (for the prediction figures)
    ParallelConfig par;
    int root; // rank 0 prints, logs and writes files
} ParallelLayout;

// FNV-1a over the flags: every rank must run the same configuration
static uint64_t hash_args(int argc, char** argv) {
    uint64_t h = 1469598103934665603ull;
    for (int i = 1; i < argc; i++)
        for (const char* c = argv[i];; c++) {
            h = (h ^ (unsigned char)*c) * 1099511628211ull;
            if (!*c) break;
        }
    return h;
}

static int needs_grid(RowStrategy st) { return st == ROW_MESH2D || st == ROW_COMPOSED || st == ROW_HIERARCHICAL; }

// the squarest r x c = p with c <= r
static int squarest_columns(int p) {
    int c = 1;
    for (int d = 1; d * d <= p; d++)
        if (p % d == 0) c = d;
    return c;
}

static void setup_parallel(ParallelLayout* pl, const TrainArgs* a, int argc, char** argv, int max_R, int min_C,
                           int max_C, double train_fraction) {
    Comm* w = &pl->world;
    pl->root = w->rank == 0;
    pl->dp = a->dp ? a->dp : 1;
    pl->sp = a->sp ? a->sp : w->size / pl->dp;
    if ((long)pl->dp * pl->sp != w->size)
        mosaic_fail("--dp %d x --sp %d = %d ranks, but the job has %d (mpirun -np)", pl->dp, pl->sp, pl->dp * pl->sp, w->size);
    if (a->batch < pl->dp) mosaic_fail("--batch %d cannot give each of --dp %d groups a dataset", a->batch, pl->dp);
    const long h = (long)(hash_args(argc, argv) >> 1);
    if (comm_host_allreduce_min_long(w, h) != comm_host_allreduce_max_long(w, h))
        mosaic_fail("the ranks were started with different flags: every rank must run the same configuration");
    pl->dp_index = w->rank / pl->sp;
    comm_split(&pl->seq, w, pl->dp_index, w->rank);
    pl->seq_rank = pl->seq.rank;

    // topology: ranks that share memory are on one node
    pl->ranks_per_node = a->ranks_per_node ? a->ranks_per_node : comm_host_node_local_size(w);

    // one strategy per layer
    const int L = a->model.L;
    pl->row_strategy = (RowStrategy*)mallocCheck((size_t)L * sizeof(RowStrategy));
    char names[1024];
    snprintf(names, sizeof(names), "%s", a->row_attn);
    int count = 0;
    for (char* tok = strtok(names, ","); tok; tok = strtok(NULL, ",")) {
        int st = row_strategy_from_name(tok);
        if (st < 0) mosaic_fail("--row-attn: unknown strategy '%s' (local, allgather, ring, mesh2d, a2a, composed, hierarchical, auto)", tok);
        if (count < L) pl->row_strategy[count] = (RowStrategy)st;
        count++;
    }
    if (count != 1 && count != L) mosaic_fail("--row-attn names %d strategies for %d layers: give one, or one per layer", count, L);
    for (int l = 1; l < L && count == 1; l++) pl->row_strategy[l] = pl->row_strategy[0];

    // the grid, when a layer may need it
    int grid = 0;
    for (int l = 0; l < L; l++) grid |= needs_grid(pl->row_strategy[l]) || pl->row_strategy[l] == ROW_AUTO;
    pl->mesh_c = pl->sp;
    pl->mesh_r = 1;
    if (a->mesh_r) {
        if ((long)a->mesh_r * a->mesh_c != pl->sp) mosaic_fail("--mesh %dx%d has %d ranks, but --sp is %d", a->mesh_r, a->mesh_c, a->mesh_r * a->mesh_c, pl->sp);
        pl->mesh_r = a->mesh_r;
        pl->mesh_c = a->mesh_c;
    } else if (grid) {
        int hier = 0;
        for (int l = 0; l < L; l++) hier |= pl->row_strategy[l] == ROW_HIERARCHICAL;
        // hierarchical: a grid row is a node; otherwise the squarest grid
        pl->mesh_c = hier ? pl->ranks_per_node : squarest_columns(pl->sp);
        if (hier && pl->sp % pl->mesh_c != 0)
            mosaic_fail("hierarchical needs --sp %d to be a multiple of the %d ranks per node (set --ranks-per-node)", pl->sp, pl->mesh_c);
        pl->mesh_r = pl->sp / pl->mesh_c;
    }
    if (grid || a->mesh_r) {
        comm_split(&pl->mesh_row, &pl->seq, pl->seq_rank / pl->mesh_c, pl->seq_rank % pl->mesh_c);
        comm_split(&pl->mesh_col, &pl->seq, pl->seq_rank % pl->mesh_c, pl->seq_rank / pl->mesh_c);
    }

    // sizes for the cost model and the fit checks
    const int local_B_min = share_count(a->batch, pl->dp, pl->dp - 1), local_B_max = share_count(a->batch, pl->dp, 0);
    RowCostInput* in = &pl->cost;
    in->rows = (double)local_B_max * max_R;
    in->train_rows = in->rows * train_fraction;
    in->C = max_C;
    in->E = a->model.E;
    in->heads = a->model.heads;
    in->p = pl->sp;
    in->mesh_r = pl->mesh_r;
    in->mesh_c = pl->mesh_c;
    in->ranks_per_node = pl->ranks_per_node;
    const long problems = (long)local_B_min * min_C * a->model.heads;
    for (int l = 0; l < L; l++) {
        RowStrategy st = pl->row_strategy[l];
        if (pl->sp == 1) st = ROW_LOCAL; // whole tables on every rank
        if (st == ROW_AUTO) {
            double best = INFINITY;
            RowStrategy choice = ROW_RING;
            for (int c = ROW_ALLGATHER; c < ROW_AUTO; c++) {
                if (!row_strategy_implemented((RowStrategy)c) || c == ROW_HIERARCHICAL) continue;
                if ((c == ROW_A2A && problems < pl->sp) || (c == ROW_COMPOSED && (pl->mesh_r == 1 || pl->mesh_c == 1))) continue;
                double t = row_strategy_seconds((RowStrategy)c, in);
                if (t < best) { best = t; choice = (RowStrategy)c; }
            }
            st = choice;
            if (pl->root)
                printf("row attention, layer %d: auto chose %s (predicted %.1f MB per rank per layer, %.2f ms at the assumed link rates)\n",
                       l, row_strategy_names[st], row_strategy_bytes(st, in) / 1e6, 1e3 * best);
        }
        if (!row_strategy_implemented(st)) mosaic_fail("--row-attn %s is not implemented in this build", row_strategy_names[st]);
        if (st == ROW_LOCAL && pl->sp > 1) mosaic_fail("--row-attn local needs whole tables on every rank: use --sp 1 (or another strategy)");
        if ((st == ROW_A2A || (needs_grid(st) && st != ROW_MESH2D && a->inner == ROW_A2A)) &&
            problems < (st == ROW_A2A ? pl->sp : pl->mesh_c))
            mosaic_fail("a2a splits (dataset, column, head) problems over ranks: %d datasets x %d columns x %d heads = %ld < %d ranks",
                        local_B_min, min_C, a->model.heads, problems, st == ROW_A2A ? pl->sp : pl->mesh_c);
        pl->row_strategy[l] = st;
    }
    ParallelConfig par = {&pl->seq, w, pl->row_strategy, !a->no_overlap, (grid || a->mesh_r) ? &pl->mesh_row : NULL,
                          (grid || a->mesh_r) ? &pl->mesh_col : NULL, a->inner, a->outer};
    pl->par = par;
}

// bytes this rank sent for row attention (and the encoder statistics) so far
static double row_bytes_sent(const ParallelLayout* pl) {
    double b = (double)pl->seq.bytes_sent;
    if (pl->par.mesh_row) b += (double)pl->mesh_row.bytes_sent + (double)pl->mesh_col.bytes_sent;
    return b;
}
static double row_wait_seconds(const ParallelLayout* pl) {
    double t = pl->seq.wait_seconds;
    if (pl->par.mesh_row) t += pl->mesh_row.wait_seconds + pl->mesh_col.wait_seconds;
    return t;
}

// ----------------------------------------------------------------------------
// Ctrl-C and SIGTERM finish the current step, save a checkpoint and exit

static volatile sig_atomic_t stop_requested = 0;
static void on_stop_signal(int sig) { (void)sig; stop_requested = 1; }

// JSON has no NaN: a figure that was not measured is null
static void json_number(char* out, size_t size, double v) {
    if (isfinite(v)) snprintf(out, size, "%.6f", v);
    else snprintf(out, size, "null");
}

static void format_duration(char* out, size_t size, double seconds) {
    long s = (long)(seconds + 0.5);
    if (s >= 3600) snprintf(out, size, "%ldh%02ldm", s / 3600, (s % 3600) / 60);
    else snprintf(out, size, "%ldm%02lds", s / 60, s % 60);
}

// labels index the decoder's outputs: one out of range would read past the logits
static void check_batch_labels(const TableBatch* batch, int outputs, const char* source) {
    for (long i = 0; i < (long)batch->B * batch->R; i++) {
        float v = batch->y[i];
        if (!(v >= 0.0f && v < (float)outputs && v == floorf(v)))
            mosaic_fail("%s: label %g is not a class index in [0, %d) (raise --outputs?)", source, v, outputs);
    }
}

int main(int argc, char** argv) {
    // --help before anything starts: the CUDA build picks its GPU while the world forms
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            TrainArgs defaults;
            train_args_default(&defaults);
            print_usage(&defaults);
            return 0;
        }
    ParallelLayout pl;
    memset(&pl, 0, sizeof(pl));
    comm_init_world(&pl.world, &argc, &argv);
    // flags, files and layout are the same on every rank: one error line, from rank 0
    mosaic_error_quiet = pl.world.rank != 0;
    TrainArgs args;
    train_args_default(&args);
    parse_args(&args, argc, argv);
    backend_init(args.threads);
    signal(SIGINT, on_stop_signal);
    signal(SIGTERM, on_stop_signal);
    if (args.write_prior_dump) {
        if (pl.world.rank == 0) write_prior_dump(&args);
        comm_finalize();
        return 0;
    }

    // data sources; their sizes fix every buffer, allocated here once
    Prior prior;
    PriorDump dump;
    int max_R, max_F, min_F;
    double train_fraction;
    if (args.prior_dump) {
        prior_dump_open(&dump, args.prior_dump);
        max_R = dump.max_rows;
        max_F = dump.max_features;
        min_F = 1;
        train_fraction = 0.5;
        if (dump.max_classes > args.model.outputs)
            mosaic_fail("'%s' has up to %d classes but --outputs is %d", args.prior_dump, dump.max_classes, args.model.outputs);
    } else {
        prior_init(&prior, args.prior, args.seed);
        max_R = args.prior.max_rows;
        max_F = args.prior.max_features;
        min_F = args.prior.min_features;
        train_fraction = 0.5 * (args.prior.min_train_fraction + args.prior.max_train_fraction);
    }
    CsvTable eval_table;
    memset(&eval_table, 0, sizeof(eval_table));
    if (args.eval_csv) {
        csv_table_read(&eval_table, args.eval_csv);
        if (eval_table.num_classes > args.model.outputs)
            mosaic_fail("'%s' has %d classes but the model has %d outputs", args.eval_csv, eval_table.num_classes, args.model.outputs);
    }
    setup_parallel(&pl, &args, argc, argv, max_R, min_F + 1, max_F + 1, train_fraction);
    mosaic_error_quiet = 0;
    const int sp = pl.sp, k = pl.seq_rank;
    const int d0 = share_start(args.batch, pl.dp, pl.dp_index), nd = share_count(args.batch, pl.dp, pl.dp_index);

    // the global batch (every rank draws the same) and this rank's share of it
    TableBatch batch, local, eval_batch, eval_local;
    table_batch_alloc(&batch, args.batch, max_R, max_F);
    const int local_R = 2 * ceil_div(max_R, sp) + 1; // a train share plus a test share
    table_batch_alloc(&local, nd, local_R, max_F);
    ActivationCapacity cap;
    cap.max_B = nd;
    cap.max_F = max_F;
    cap.max_rows = (long)nd * local_R;
    cap.max_cells = cap.max_rows * (max_F + 1);
    cap.max_inputs = cap.max_rows * max_F;
    cap.max_R_global = max_R;
    if (args.eval_csv) {
        const long eval_F = eval_table.features, eval_R = 2 * ceil_div(eval_table.rows, sp) + 1;
        table_batch_alloc(&eval_batch, 1, eval_table.rows, eval_table.features);
        table_batch_alloc(&eval_local, 1, (int)eval_R, eval_table.features);
        if (eval_table.rows > cap.max_R_global) cap.max_R_global = eval_table.rows;
        if (eval_R > cap.max_rows) cap.max_rows = eval_R;
        if (eval_R * (eval_F + 1) > cap.max_cells) cap.max_cells = eval_R * (eval_F + 1);
        if (eval_R * eval_F > cap.max_inputs) cap.max_inputs = eval_R * eval_F;
        if (eval_F > cap.max_F) cap.max_F = (int)eval_F;
    }

    TabPFN model;
    tabpfn_build(&model, args.model, cap, 1, &pl.par);
    tabpfn_init_parameters(&model, args.seed); // the same seed: the same replica on every rank
    int start_step = 0;
    if (args.resume_path) start_step = checkpoint_load(args.resume_path, &model);
    if (args.prior_dump) prior_dump_skip_to(&dump, start_step, args.batch);
    else prior_skip_to(&prior, start_step);

    const int root = pl.root;
    FILE* log = args.log_path && root ? fopenCheck(args.log_path, "a") : NULL;
    if (root) {
        printf("mosaic train_tabpfn | %zu parameters | E %d heads %d hidden %d layers %d outputs %d | threads %d\n",
               model.num_parameters, args.model.E, args.model.heads, args.model.H, args.model.L, args.model.outputs,
               backend_threads());
        if (args.prior_dump) printf("data: prior dump '%s' (%d datasets) | batch %d\n", args.prior_dump, dump.num_datasets, args.batch);
        else printf("data: built-in prior | rows %d-%d | features %d-%d | classes %d | batch %d\n", args.prior.min_rows,
                    args.prior.max_rows, args.prior.min_features, args.prior.max_features, args.prior.num_classes, args.batch);
        if (pl.world.size > 1) {
            printf("layout: %d ranks = dp %d x sp %d", pl.world.size, pl.dp, sp);
            if (pl.par.mesh_row) printf(" | grid %dx%d", pl.mesh_r, pl.mesh_c);
            printf(" | row attention:");
            for (int l = 0; l < args.model.L; l++) printf(" %s", row_strategy_names[pl.row_strategy[l]]);
            printf("%s\n", args.no_overlap ? " (no overlap)" : "");
        }
        if (start_step > 0) printf("resumed from '%s' at step %d\n", args.resume_path, start_step);
    }

    // training loop: nothing below allocates per step
    double train_seconds = 0.0, loss_tail_sum = 0.0, bytes_at_first = 0.0, wait_at_first = 0.0;
    int steps_timed = 0, loss_tail_count = 0, step = start_step;
    float last_loss = NAN;
    EvalResult eval = {NAN, NAN};
    const int tail = args.steps < 50 ? (args.steps > 0 ? args.steps : 1) : 50;
    const int last_step = args.stop_at && args.stop_at < args.steps ? args.stop_at : args.steps;
    int stop = 0;
    for (; step < last_step && !stop; step++) {
        if (step == start_step + 1) { // the first step warms caches: time from the second
            bytes_at_first = row_bytes_sent(&pl);
            wait_at_first = row_wait_seconds(&pl);
        }
        device_synchronize(); // the clock reads finished work only
        double t0 = wall_seconds();
        if (args.prior_dump) prior_dump_next_batch(&batch, &dump, args.batch);
        else prior_sample_batch(&batch, &prior, args.batch);
        check_batch_labels(&batch, args.model.outputs, args.prior_dump ? args.prior_dump : "prior");
        shard_batch(&local, &batch, d0, nd, sp, k);
        tabpfn_upload_batch(&model, local.x, local.y, local.B, local.R, local.F, local.S);
        tabpfn_set_global_rows(&model, batch.S, batch.R - batch.S);
        tabpfn_zero_grad(&model);
        tabpfn_forward(&model);
        if (step + 1 == args.fail_step && pl.world.rank == args.fail_rank) { // the others wait in backward
            if (!strcmp(args.fail_how, "error")) mosaic_fail("failure injected at step %d (--debug-fail-rank)", step + 1);
            const int hang = !strcmp(args.fail_how, "hang");
            fprintf(stderr, "mosaic: [rank %d] %s mid-step %d, as --debug-fail-rank asked\n", pl.world.rank,
                    hang ? "hanging" : "dying", step + 1);
            fflush(stderr);
            if (!strcmp(args.fail_how, "kill")) raise(SIGKILL);
            while (hang) pause(); // alive, but never again answering its peers
            _exit(3); // no MPI_Finalize, no goodbye: as a crashed process would
        }
        tabpfn_backward(&model);
        float grad_norm = tabpfn_update(&model, &args.opt, step);
        device_synchronize();
        double dt = wall_seconds() - t0;
        float loss = model.mean_loss;
        if (!isfinite(loss) || !isfinite(grad_norm))
            mosaic_fail("loss %g / grad norm %g is not finite at step %d (lower --lr?)", loss, grad_norm, step + 1);
        last_loss = loss;
        if (step >= args.steps - tail) { loss_tail_sum += loss; loss_tail_count++; }
        if (step > start_step) { train_seconds += dt; steps_timed++; }
        double ms = 1000.0 * dt;
        double avg = steps_timed ? train_seconds / steps_timed : dt;
        float lr = learning_rate_at(&args.opt, step);
        if (root && (!args.quiet || (step + 1) % 50 == 0 || step == start_step || step + 1 == args.steps)) {
            char eta[32];
            format_duration(eta, sizeof(eta), avg * (args.steps - step - 1));
            printf("step %5d/%d | loss %.6f | grad norm %.4f | lr %.2e | %.1f ms | %.1f datasets/s | eta %s\n",
                   step + 1, args.steps, loss, grad_norm, lr, ms, batch.B / dt, eta);
            fflush(stdout);
        }
        if (log) {
            fprintf(log, "step %d loss %.9g grad_norm %.9g lr %.9g ms %.3f\n", step + 1, loss, grad_norm, lr, ms);
            fflush(log); // a crash loses at most the step in flight
        }
        if (args.eval_csv && args.eval_every > 0 && (step + 1) % args.eval_every == 0 && step + 1 < args.steps) {
            eval = evaluate(&model, &eval_table, &eval_batch, &eval_local, &pl.seq, args.eval_seed);
            if (root) printf("eval  step %d | %s | roc_auc %.4f | accuracy %.4f\n", step + 1, args.eval_csv, eval.roc_auc, eval.accuracy);
            if (log) fprintf(log, "eval step %d roc_auc %.6f accuracy %.6f\n", step + 1, eval.roc_auc, eval.accuracy);
        }
        if (root && args.checkpoint_path && args.checkpoint_every > 0 && (step + 1) % args.checkpoint_every == 0)
            checkpoint_save(args.checkpoint_path, &model, step + 1, args.seed);
        // a signal may reach the ranks at different steps: stop together
        stop = (int)comm_host_allreduce_max_long(&pl.world, stop_requested);
    }
    if (step < args.steps) { // interrupted, or --stop-at: keep everything for --resume
        const char* path = args.checkpoint_path ? args.checkpoint_path : "train_tabpfn_interrupted.ckpt";
        if (root) {
            checkpoint_save(path, &model, step, args.seed);
            fprintf(stderr, "mosaic: %s at step %d of %d; checkpoint saved to '%s' (continue with --resume %s)\n",
                    stop ? "interrupted" : "stopped", step, args.steps, path, path);
        }
        if (log) fclose(log);
        comm_finalize();
        return stop ? 130 : 0;
    }
    if (root && args.checkpoint_path) checkpoint_save(args.checkpoint_path, &model, step, args.seed);
    if (root && args.export_path) export_parameters(args.export_path, &model);

    if (args.eval_csv) {
        eval = evaluate(&model, &eval_table, &eval_batch, &eval_local, &pl.seq, args.eval_seed);
        if (root) printf("eval  step %d | %s | roc_auc %.4f | accuracy %.4f\n", step, args.eval_csv, eval.roc_auc, eval.accuracy);
        if (log) fprintf(log, "eval step %d roc_auc %.6f accuracy %.6f\n", step, eval.roc_auc, eval.accuracy);
    }

    // figures for the summary: time on rank 0; traffic, waits and memory as the max over ranks
    double ms_per_step = steps_timed ? 1000.0 * train_seconds / steps_timed : NAN;
    double row_mb = steps_timed ? (row_bytes_sent(&pl) - bytes_at_first) / steps_timed / 1e6 : NAN;
    double wait_ms = steps_timed ? 1000.0 * (row_wait_seconds(&pl) - wait_at_first) / steps_timed : NAN;
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    long rss_kb = comm_host_allreduce_max_long(&pl.world, usage.ru_maxrss);
    long row_kb = comm_host_allreduce_max_long(&pl.world, isfinite(row_mb) ? (long)(row_mb * 1000.0) : -1);
    long wait_us = comm_host_allreduce_max_long(&pl.world, isfinite(wait_ms) ? (long)(wait_ms * 1000.0) : -1);
    double predicted_mb = 0.0;
    for (int l = 0; l < args.model.L; l++) predicted_mb += row_strategy_bytes(pl.row_strategy[l], &pl.cost) / 1e6;
    if (root) {
        char final_loss[32], last[32], ms[32], rate[32], auc[32], acc[32], rmb[32], wms[32];
        json_number(final_loss, sizeof(final_loss), loss_tail_count ? loss_tail_sum / loss_tail_count : NAN);
        json_number(last, sizeof(last), last_loss);
        json_number(ms, sizeof(ms), ms_per_step);
        json_number(rate, sizeof(rate), args.batch * 1000.0 / ms_per_step);
        json_number(auc, sizeof(auc), eval.roc_auc);
        json_number(acc, sizeof(acc), eval.accuracy);
        json_number(rmb, sizeof(rmb), row_kb >= 0 ? row_kb / 1000.0 : NAN);
        json_number(wms, sizeof(wms), wait_us >= 0 ? wait_us / 1000.0 : NAN);
        printf("summary {\"steps\": %d, \"final_loss\": %s, \"last_loss\": %s, \"ms_per_step\": %s, "
               "\"datasets_per_s\": %s, \"batch\": %d, \"threads\": %d, \"parameters\": %zu, "
               "\"ranks\": %d, \"dp\": %d, \"sp\": %d, \"row_attn\": \"%s\", \"overlap\": %s, "
               "\"row_mb_per_step_per_rank\": %s, \"predicted_row_mb_per_step_per_rank\": %.6f, "
               "\"comm_wait_ms_per_step\": %s, \"peak_rss_mb\": %.1f, "
               "\"eval\": {\"table\": \"%s\", \"roc_auc\": %s, \"accuracy\": %s}}\n",
               step, final_loss, last, ms, rate, args.batch, backend_threads(), model.num_parameters,
               pl.world.size, pl.dp, sp, row_strategy_names[pl.row_strategy[0]], args.no_overlap ? "false" : "true",
               rmb, predicted_mb, wms, rss_kb / 1024.0, args.eval_csv ? args.eval_csv : "none", auc, acc);
    }
    if (log) fclose(log);
    tabpfn_free(&model);
    table_batch_free(&batch);
    table_batch_free(&local);
    if (args.eval_csv) { table_batch_free(&eval_batch); table_batch_free(&eval_local); csv_table_free(&eval_table); }
    if (args.prior_dump) prior_dump_close(&dump);
    else prior_free(&prior);
    free(pl.row_strategy);
    comm_finalize();
    return 0;
}
