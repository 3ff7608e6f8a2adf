// The whole model's backward against central finite differences of its forward, on a tiny
// configuration, in float (the precision the trainer runs in). Every parameter is
// perturbed by h = 2e-3; the float loss limits the numeric gradient to about 1e-4, so the
// tolerance is |analytic - numeric| <= 3e-4 + 2e-2 * |numeric|. The op-level checks in
// double (test_ops_gradcheck, test_flash_attention) hold each piece to 1e-6.
#include "test_util.h"
#include "../model/tabpfn.h"

// The pruned last layer (model->prune_last_layer: only what reaches the decoder) against the
// whole layer, same parameters and batch: loss, logits and every parameter gradient. Both run in
// float with GEMMs of different heights, so they agree to summation order: |a - b| <= 1e-6 +
// 1e-4 |b| (a dropped residual or a wrong slice is off by the gradient's own size).
static void check_pruned_equals_whole(TabPFNConfig config, int B, int R, int F, int S, uint64_t seed) {
    char tag[96];
    snprintf(tag, sizeof(tag), "E %d heads %d L %d, B %d R %d F %d S %d", config.E, config.heads, config.L, B, R, F, S);
    ActivationCapacity cap = {(long)B * R * (F + 1), (long)B * R, (long)B * R * F, B, F, R};
    Comm comm;
    comm_init_single(&comm);
    ParallelConfig par = parallel_config_single(&comm);
    TabPFN whole, pruned;
    tabpfn_build(&whole, config, cap, 1, &par);
    tabpfn_build(&pruned, config, cap, 1, &par);
    whole.prune_last_layer = 0;
    tabpfn_init_parameters(&whole, seed);
    const size_t P = whole.num_parameters;
    float* params = (float*)mallocCheck(P * sizeof(float));
    device_copy_to_host(params, whole.params_memory, P * sizeof(float));
    Rng rng;
    rng_seed(&rng, seed + 1);
    for (size_t i = 0; i < P; i++) params[i] += (float)(0.05 * rng_normal(&rng)); // LayerNorm affines too
    device_copy_to_device(whole.params_memory, params, P * sizeof(float));
    device_copy_to_device(pruned.params_memory, params, P * sizeof(float));
    float* x = (float*)mallocCheck((size_t)B * R * F * sizeof(float));
    float* y = (float*)mallocCheck((size_t)B * R * sizeof(float));
    for (long i = 0; i < (long)B * R * F; i++) x[i] = (float)(2.0 * rng_normal(&rng));
    for (long i = 0; i < (long)B * R; i++) y[i] = (float)rng_int(&rng, 0, config.outputs - 1);

    const long TK = (long)B * (R - S) * config.outputs;
    float* logits[2];
    float* grads[2];
    TabPFN* models[2] = {&whole, &pruned};
    for (int m = 0; m < 2; m++) {
        tabpfn_upload_batch(models[m], x, y, B, R, F, S);
        tabpfn_zero_grad(models[m]);
        tabpfn_forward(models[m]);
        tabpfn_backward(models[m]);
        logits[m] = (float*)mallocCheck((size_t)TK * sizeof(float));
        grads[m] = (float*)mallocCheck(P * sizeof(float));
        device_copy_to_host(logits[m], models[m]->acts.logits, (size_t)TK * sizeof(float));
        device_copy_to_host(grads[m], models[m]->grads_memory, P * sizeof(float));
    }
    char what[200];
    check_true("the pruned model runs the pruned last layer", tabpfn_prunes_last_layer(&pruned) && !tabpfn_prunes_last_layer(&whole));
    snprintf(what, sizeof(what), "pruned last layer: loss (%s)", tag);
    allclose_report(what, &pruned.mean_loss, &whole.mean_loss, 1, 1e-6, 1e-4);
    snprintf(what, sizeof(what), "pruned last layer: logits (%s)", tag);
    allclose_report(what, logits[1], logits[0], TK, 1e-6, 1e-4);
    ParameterInfo info[NUM_PARAMETER_TENSORS];
    parameter_infos(info, config);
    size_t offset = 0;
    for (int t = 0; t < NUM_PARAMETER_TENSORS; t++) {
        char name[128];
        parameter_name(name, sizeof(name), &info[t], config.L - 1);
        snprintf(what, sizeof(what), "pruned last layer: grad %s%s", name, info[t].per_layer ? " (all layers)" : "");
        allclose_report(what, grads[1] + offset, grads[0] + offset, (long)whole.param_sizes[t], 1e-6, 1e-4);
        offset += whole.param_sizes[t];
    }
    for (int m = 0; m < 2; m++) {
        free(logits[m]);
        free(grads[m]);
        tabpfn_free(models[m]);
    }
    free(params);
    free(x);
    free(y);
}

int main(void) {
    // pruning first: cheap, and the finite differences below then check the pruned model
    check_pruned_equals_whole(TabPFNConfig{8, 2, 12, 2, 3}, 2, 9, 3, 5, 21);
    check_pruned_equals_whole(TabPFNConfig{16, 4, 24, 3, 2}, 3, 30, 5, 13, 22); // the default's C = 6, deeper
    check_pruned_equals_whole(TabPFNConfig{8, 2, 12, 1, 4}, 2, 11, 1, 6, 23);  // one layer, C = 2

    TabPFNConfig config = {8, 2, 12, 2, 3};
    const int B = 2, R = 9, F = 3, S = 5;
    ActivationCapacity cap = {(long)B * R * (F + 1), (long)B * R, (long)B * R * F, B, F, R};
    Comm comm;
    comm_init_single(&comm);
    TabPFN model;
    ParallelConfig par = parallel_config_single(&comm);
    tabpfn_build(&model, config, cap, 1, &par);
    tabpfn_init_parameters(&model, 3);
    // random LayerNorm affine parameters, so their gradients are not a special case; model
    // memory is device memory, reached only through the copies
    const size_t P = model.num_parameters;
    float* params = (float*)mallocCheck(P * sizeof(float));
    device_copy_to_host(params, model.params_memory, P * sizeof(float));
    Rng rng;
    rng_seed(&rng, 11);
    for (size_t i = 0; i < P; i++) params[i] += (float)(0.05 * rng_normal(&rng));
    device_copy_to_device(model.params_memory, params, P * sizeof(float));

    float x[B * R * F], y[B * R];
    for (int i = 0; i < B * R * F; i++) x[i] = (float)(2.0 * rng_normal(&rng));
    for (int i = 0; i < B * R; i++) y[i] = (float)rng_int(&rng, 0, config.outputs - 1);
    tabpfn_upload_batch(&model, x, y, B, R, F, S);

    tabpfn_zero_grad(&model);
    tabpfn_forward(&model);
    tabpfn_backward(&model);
    float* analytic = (float*)mallocCheck(P * sizeof(float));
    device_copy_to_host(analytic, model.grads_memory, P * sizeof(float));

    // the same inputs give the same bits
    tabpfn_zero_grad(&model);
    tabpfn_forward(&model);
    tabpfn_backward(&model);
    float* again = (float*)mallocCheck(P * sizeof(float));
    device_copy_to_host(again, model.grads_memory, P * sizeof(float));
    check_true("forward + backward twice: identical gradient bits", memcmp(analytic, again, P * sizeof(float)) == 0);
    free(again);

    float* numeric = (float*)mallocCheck(P * sizeof(float));
    const float h = 2e-3f;
    for (size_t i = 0; i < P; i++) {
        const float saved = params[i], plus = saved + h, minus = saved - h;
        device_copy_to_device(model.params_memory + i, &plus, sizeof(float));
        tabpfn_forward(&model);
        double lp = model.mean_loss;
        device_copy_to_device(model.params_memory + i, &minus, sizeof(float));
        tabpfn_forward(&model);
        double lm = model.mean_loss;
        device_copy_to_device(model.params_memory + i, &saved, sizeof(float));
        numeric[i] = (float)((lp - lm) / (2.0 * h));
    }
    // report per parameter tensor, so a failure names the op
    ParameterInfo info[NUM_PARAMETER_TENSORS];
    parameter_infos(info, config);
    size_t offset = 0;
    for (int t = 0; t < NUM_PARAMETER_TENSORS; t++) {
        char what[160];
        char name[128];
        parameter_name(name, sizeof(name), &info[t], 0);
        snprintf(what, sizeof(what), "model grad %s%s", name, info[t].per_layer ? " (+ all layers)" : "");
        allclose_report(what, analytic + offset, numeric + offset, (long)model.param_sizes[t], 3e-4, 2e-2);
        offset += model.param_sizes[t];
    }
    free(params);
    free(analytic);
    free(numeric);
    tabpfn_free(&model);
    return tests_finish();
}
