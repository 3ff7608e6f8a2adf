// Row-sharded runs against one process, under mpirun (2, 3, 4 ranks).
// Every rank builds the whole batch and runs the single-process model itself (the
// reference), then runs the sharded model on its share; for every strategy, layout
// (data parallel x sequence parallel) and mesh shape that fits the world:
//   - the loss equals the reference loss          |err| <= 2e-5 (relative)
//   - this rank's logits equal the reference rows |err| <= 2e-5 + 2e-4 |ref|
//   - every parameter gradient (summed over ranks) equals the reference
//                                                   |err| <= 1e-4 max|ref| + 1e-3 |ref|
//   - 10 AdamW steps give the same losses          |err| <= 5e-5
//   - the same run twice gives the same bits
// Cases include rows not divisible by p and fewer train rows than ranks.
// usage: mpirun -np P ./build/test_sharded [strategy ...]   (default: every strategy)
#include "test_util.h"
#include "../model/tabpfn.h"
#include "../dataloader/prior.h"

typedef struct {
    const char* name;
    int B, R, F, S; // global batch
} ShardCase;

typedef struct {
    RowStrategy strategy[4]; // per layer (L = 2 here; the rest unused)
    int dp, sp;
    int overlap;
    int mesh_c;              // grid r x c of the seq group, c = mesh_c (0: no grid)
    RowStrategy inner, outer; // composed / hierarchical
} Layout;

static int needs_mesh(RowStrategy st) { return st == ROW_MESH2D || st == ROW_COMPOSED || st == ROW_HIERARCHICAL; }

static TabPFNConfig test_config(void) {
    TabPFNConfig c = {16, 2, 24, 2, 3};
    return c;
}

static Comm world;

// ten AdamW steps on the batch already uploaded; losses (10) before each update
static void train_ten_steps(float* losses, TabPFN* model) {
    OptimizerConfig opt = {3e-3f, 3, 10, 0.01f, 0.9f, 0.999f, 1e-8f, 1.0f};
    for (int step = 0; step < 10; step++) {
        tabpfn_zero_grad(model);
        tabpfn_forward(model);
        losses[step] = model->mean_loss;
        tabpfn_backward(model);
        tabpfn_update(model, &opt, step);
    }
}

// runs one layout on one case; returns failures on this rank
static int run_case(const ShardCase* sc, const Layout* lay, const TableBatch* global, TabPFN* ref,
                    const float* ref_grads, const float* ref_logits, const float* ref_losses) {
    const TabPFNConfig config = test_config();
    const int dp_index = world.rank / lay->sp;
    Comm seq;
    comm_split(&seq, &world, dp_index, world.rank);
    const int k = seq.rank, p = seq.size;
    const int d0 = share_start(sc->B, lay->dp, dp_index), nd = share_count(sc->B, lay->dp, dp_index);

    TableBatch local;
    table_batch_alloc(&local, nd, 2 * ceil_div(sc->R, p) + 1, sc->F);
    shard_batch(&local, global, d0, nd, p, k);

    ActivationCapacity cap;
    cap.max_B = nd;
    cap.max_F = sc->F;
    cap.max_rows = (long)nd * local.max_R;
    cap.max_cells = cap.max_rows * (sc->F + 1);
    cap.max_inputs = cap.max_rows * sc->F;
    cap.max_R_global = sc->R;
    RowStrategy strategies[2] = {lay->strategy[0], lay->strategy[1]};
    Comm mesh_row, mesh_col;
    ParallelConfig par = {&seq, &world, strategies, lay->overlap, NULL, NULL, lay->inner, lay->outer};
    if (lay->mesh_c) {
        comm_split(&mesh_row, &seq, k / lay->mesh_c, k % lay->mesh_c);
        comm_split(&mesh_col, &seq, k % lay->mesh_c, k / lay->mesh_c);
        par.mesh_row = &mesh_row;
        par.mesh_col = &mesh_col;
    }
    TabPFN model;
    tabpfn_build(&model, config, cap, 1, &par);
    device_copy(model.params_memory, ref->params_memory, model.num_parameters * sizeof(float));

    char label[200];
    char mesh[64] = "";
    if (lay->mesh_c) snprintf(mesh, sizeof(mesh), " mesh %dx%d", lay->sp / lay->mesh_c, lay->mesh_c);
    if (lay->mesh_c && (lay->strategy[0] == ROW_COMPOSED || lay->strategy[0] == ROW_HIERARCHICAL))
        snprintf(mesh + strlen(mesh), sizeof(mesh) - strlen(mesh), " %s x %s", row_strategy_names[lay->inner],
                 row_strategy_names[lay->outer]);
    snprintf(label, sizeof(label), "rank %d %-10s dp %d x sp %d %s/%s%s%s", world.rank, sc->name, lay->dp, lay->sp,
             row_strategy_names[lay->strategy[0]], row_strategy_names[lay->strategy[1]], mesh,
             lay->overlap ? "" : " no-overlap");
    int before = tests_failed;
    char what[300];

    tabpfn_upload_batch(&model, local.x, local.y, local.B, local.R, local.F, local.S);
    tabpfn_set_global_rows(&model, sc->S, sc->R - sc->S);
    // a2a needs B x heads problems for the last layer's one column, else it runs whole
    if (!tabpfn_prunes_last_layer(&model)) snprintf(label + strlen(label), sizeof(label) - strlen(label), " (whole last layer)");
    tabpfn_zero_grad(&model);
    tabpfn_forward(&model);
    tabpfn_backward(&model);
    float loss = model.mean_loss;
    snprintf(what, sizeof(what), "%s: loss", label);
    allclose_report(what, &loss, &ref_losses[0], 1, 0.0, 2e-5);

    // this rank's logits are rows [share_start(T), +share_count(T)) of its datasets' test rows
    const int T = sc->R - sc->S, t0 = share_start(T, p, k), tk = share_count(T, p, k), K = config.outputs;
    float* want = (float*)mallocCheck((size_t)(nd * tk * K + 1) * sizeof(float));
    for (int b = 0; b < nd; b++)
        memcpy(want + (size_t)b * tk * K, ref_logits + ((size_t)(d0 + b) * T + t0) * K, (size_t)tk * K * sizeof(float));
    float* logits = (float*)mallocCheck((size_t)(nd * tk * K + 1) * sizeof(float));
    device_copy_to_host(logits, model.acts.logits, (size_t)nd * tk * K * sizeof(float));
    snprintf(what, sizeof(what), "%s: logits of this rank's test rows", label);
    allclose_report(what, logits, want, (long)nd * tk * K, 2e-5, 2e-4);
    free(logits);
    free(want);

    const size_t P = model.num_parameters;
    double max_ref = 0.0;
    for (size_t i = 0; i < P; i++) max_ref = fabs(ref_grads[i]) > max_ref ? fabs(ref_grads[i]) : max_ref;
    float* first = (float*)mallocCheck(P * sizeof(float));
    device_copy_to_host(first, model.grads_memory, P * sizeof(float));
    snprintf(what, sizeof(what), "%s: every parameter gradient", label);
    allclose_report(what, first, ref_grads, (long)P, 1e-4 * max_ref, 1e-3);

    // the same inputs twice: the same bits
    float* second = (float*)mallocCheck(P * sizeof(float));
    tabpfn_zero_grad(&model);
    tabpfn_forward(&model);
    tabpfn_backward(&model);
    device_copy_to_host(second, model.grads_memory, P * sizeof(float));
    snprintf(what, sizeof(what), "%s: run twice, identical gradient bits", label);
    check_true(what, memcmp(first, second, P * sizeof(float)) == 0);
    free(first);
    free(second);

    // ten optimizer steps on the same batch
    float losses[10];
    train_ten_steps(losses, &model);
    snprintf(what, sizeof(what), "%s: losses of 10 AdamW steps", label);
    allclose_report(what, losses, ref_losses, 10, 5e-5, 0.0);

    tabpfn_free(&model);
    table_batch_free(&local);
    comm_free(&seq);
    if (lay->mesh_c) {
        comm_free(&mesh_row);
        comm_free(&mesh_col);
    }
    return tests_failed - before;
}

int main(int argc, char** argv) {
    comm_init_world(&world, &argc, &argv);
    tests_quiet_ok = world.rank != 0; // rank 0 reports every check, the others their failures
    int wanted[ROW_NUM_STRATEGIES] = {0}, any_wanted = 0;
    for (int i = 1; i < argc; i++) {
        int st = row_strategy_from_name(argv[i]);
        if (st < 0) mosaic_fail("unknown strategy '%s'", argv[i]);
        wanted[st] = any_wanted = 1;
    }
    const int P = world.size;
    ShardCase cases[] = {
        {"uneven", 4, 23, 3, 9},     // rows and train rows not divisible by p
        {"few-train", 2, 13, 2, 2},  // fewer train rows than ranks (for p > 2)
        {"one-table", 1, 11, 2, 5},  // a2a over 3+ ranks: too few problems for the pruned last layer
    };
    const TabPFNConfig config = test_config();
    int failed_here = 0;
    for (size_t ci = 0; ci < sizeof(cases) / sizeof(cases[0]); ci++) {
        const ShardCase* sc = &cases[ci];
        // the global batch from the prior, then ranks' own reference run
        PriorConfig pc = prior_config_default();
        pc.min_rows = pc.max_rows = sc->R;
        pc.min_features = pc.max_features = sc->F;
        pc.num_classes = 3;
        pc.min_train_fraction = pc.max_train_fraction = (float)sc->S / sc->R;
        Prior prior;
        prior_init(&prior, pc, 1234 + ci);
        TableBatch global;
        table_batch_alloc(&global, sc->B, sc->R, sc->F);
        prior_sample_batch(&global, &prior, sc->B);
        MOSAIC_CHECK(global.S == sc->S, "the prior chose another split");

        Comm single;
        comm_init_single(&single);
        ParallelConfig par1 = parallel_config_single(&single);
        ActivationCapacity cap1 = {(long)sc->B * sc->R * (sc->F + 1), (long)sc->B * sc->R, (long)sc->B * sc->R * sc->F,
                                   sc->B, sc->F, sc->R};
        TabPFN ref;
        tabpfn_build(&ref, config, cap1, 1, &par1);
        ref.prune_last_layer = 0; // the whole last layer: every sharded case runs pruned against it
        tabpfn_init_parameters(&ref, 99);
        tabpfn_upload_batch(&ref, global.x, global.y, sc->B, sc->R, sc->F, sc->S);
        tabpfn_zero_grad(&ref);
        tabpfn_forward(&ref);
        tabpfn_backward(&ref);
        const long T = (long)sc->B * (sc->R - sc->S);
        float* ref_grads = (float*)mallocCheck(ref.num_parameters * sizeof(float));
        float* ref_logits = (float*)mallocCheck((size_t)T * config.outputs * sizeof(float));
        float* init_params = (float*)mallocCheck(ref.num_parameters * sizeof(float));
        device_copy_to_host(ref_grads, ref.grads_memory, ref.num_parameters * sizeof(float));
        device_copy_to_host(ref_logits, ref.acts.logits, (size_t)T * config.outputs * sizeof(float));
        device_copy_to_host(init_params, ref.params_memory, ref.num_parameters * sizeof(float));
        float ref_losses[10];
        train_ten_steps(ref_losses, &ref);
        device_copy_to_device(ref.params_memory, init_params, ref.num_parameters * sizeof(float));

        // every layout that fits: dp x sp = P; each strategy on both layers, then mixed
        for (int dp = 1; dp <= P; dp++) {
            if (P % dp != 0 || dp > sc->B) continue;
            const int sp = P / dp;
            for (int st = ROW_ALLGATHER; st < ROW_AUTO; st++) {
                if (any_wanted && !wanted[st]) continue;
                if (!row_strategy_implemented((RowStrategy)st) || !row_strategy_fits((RowStrategy)st, sp)) continue;
                if (needs_mesh((RowStrategy)st)) {
                    // every grid r x c of the group; composed/hierarchical with each inner x outer
                    for (int c = 1; c <= sp; c++) {
                        if (sp % c != 0) continue;
                        RowStrategy inners[2] = {ROW_A2A, ROW_ALLGATHER}, outers[2] = {ROW_RING, ROW_ALLGATHER};
                        int combos = st == ROW_MESH2D ? 1 : 4;
                        for (int ci2 = 0; ci2 < combos; ci2++) {
                            Layout lay = {{(RowStrategy)st, (RowStrategy)st}, dp, sp, 1, c, inners[ci2 / 2], outers[ci2 % 2]};
                            failed_here += run_case(sc, &lay, &global, &ref, ref_grads, ref_logits, ref_losses);
                        }
                    }
                    continue;
                }
                for (int overlap = 1; overlap >= 0; overlap--) {
                    if (!overlap && st != ROW_RING) continue;
                    Layout lay = {{(RowStrategy)st, (RowStrategy)st}, dp, sp, overlap, 0, ROW_A2A, ROW_RING};
                    failed_here += run_case(sc, &lay, &global, &ref, ref_grads, ref_logits, ref_losses);
                }
            }
            if (!any_wanted) { // layers with different strategies in one model
                Layout lay = {{ROW_RING, ROW_ALLGATHER}, dp, sp, 1, 0, ROW_A2A, ROW_RING};
                failed_here += run_case(sc, &lay, &global, &ref, ref_grads, ref_logits, ref_losses);
            }
        }
        tabpfn_free(&ref);
        table_batch_free(&global);
        prior_free(&prior);
        free(ref_grads);
        free(ref_logits);
        free(init_params);
    }
    // every rank's verdict: a failure anywhere fails the run
    long total_failed = comm_host_allreduce_max_long(&world, failed_here);
    if (total_failed && !failed_here && world.rank == 0) printf("FAIL  checks failed on another rank (its FAIL lines above)\n");
    int code = world.rank == 0 ? tests_finish() : (tests_failed ? 1 : 0); // one closing line, from rank 0
    comm_finalize();
    return total_failed ? 1 : code;
}
