// The whole model's backward against central finite differences of its forward, on a tiny
// configuration, in float (the precision the trainer runs in). Every parameter is
// perturbed by h = 2e-3; the float loss limits the numeric gradient to about 1e-4, so the
// tolerance is |analytic - numeric| <= 3e-4 + 2e-2 * |numeric|. The op-level checks in
// double (test_ops_gradcheck, test_flash_attention) hold each piece to 1e-6.
#include "test_util.h"
#include "../model/tabpfn.h"

int main(void) {
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
