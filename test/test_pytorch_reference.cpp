// The model against the PyTorch reference (scripts/tabpfn_reference.py, run in float64):
// the same parameters and batch must give the same logits, loss and every parameter
// gradient, and 10 AdamW steps (with clipping, warmup and cosine decay) the same losses; then,
// from the same start, 10 schedule-free AdamW steps (clipping, warmup; the reference is written
// from the paper) the same losses and the same final y (the parameters) and x (the average).
// usage: test_pytorch_reference DEBUG_STATE.bin
// Tolerances (float32 here vs float64 there): logits and loss |err| <= 1e-5 + 1e-5 |ref|;
// gradients |err| <= 1e-5 * max|ref of that tensor| + 1e-4 |ref|; step losses |err| <= 1e-5;
// schedule-free's final x and y |err| <= 5e-6 + 1e-5 |ref|, the key part of the in_proj biases 1e-3 (see below).
#include "test_util.h"
#include "../model/tabpfn.h"
#include "../model/model_file.h"

// Schedule-free's final parameters: every step moves a parameter by about lr_t (Adam's
// normalised step), so float32 rounding of tiny gradients can shift an element by a fraction
// of lr (measured: at most 5e-7 after 10 steps at lr 4e-3). A wrong update (no bias correction: 30x the first step; no averaging; decay at x)
// moves elements by ~lr or more. One exception: the key part of the attention in_proj biases
// gets no gradient at all (softmax ignores a constant added to every score), so its float32
// gradient is rounding noise that Adam's normalisation turns into real steps (the float64
// reference's is ~1e-17: no step); those E elements per bias get SF_KEY_BIAS_ATOL, lr / 4.
#define SF_PARAM_ATOL 5e-6
#define SF_KEY_BIAS_ATOL 1e-3

// block (num_parameters, the flat layout) against the reference's PREFIX.NAME tensors
static void compare_parameters(const char* what, const float* block, TensorFile* state, const char* prefix,
                               TabPFNConfig config) {
    ParameterInfo info[NUM_PARAMETER_TENSORS];
    parameter_infos(info, config);
    double worst = 0.0;
    const float* p = block;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++)
        for (int l = 0; l < (info[i].per_layer ? config.L : 1); l++) {
            char name[128], ref_name[160];
            parameter_name(name, sizeof(name), &info[i], l);
            snprintf(ref_name, sizeof(ref_name), "%s.%s", prefix, name);
            const long n = (long)parameter_layer_numel(&info[i]);
            const float* ref = tensor_file_get(state, ref_name, n)->data;
            const int in_bias = i == P_FA_IN_B || i == P_RA_IN_B; // (3E): q, k, v
            const long E = config.E;
            for (long j = 0; j < n; j++)
                if (!(in_bias && j >= E && j < 2 * E)) worst = fmax(worst, fabs((double)p[j] - ref[j]));
            if (in_bias) {
                char key_name[200];
                snprintf(key_name, sizeof(key_name), "%s (key part: no gradient)", ref_name);
                allclose_report(ref_name, p, ref, E, SF_PARAM_ATOL, 1e-5);
                allclose_report(key_name, p + E, ref + E, E, SF_KEY_BIAS_ATOL, 0.0);
                allclose_report(ref_name, p + 2 * E, ref + 2 * E, E, SF_PARAM_ATOL, 1e-5);
            } else {
                allclose_report(ref_name, p, ref, n, SF_PARAM_ATOL, 1e-5);
            }
            p += n;
        }
    printf("%s: largest |difference| %.3g (key biases aside)\n", what, worst);
}

// `steps` optimizer steps on the uploaded batch: each step's loss and learning rate
static void train_steps(float* losses, float* lrs, TabPFN* model, const OptimizerConfig* opt, int steps) {
    for (int step = 0; step < steps; step++) {
        lrs[step] = learning_rate_at(opt, step);
        tabpfn_zero_grad(model);
        tabpfn_forward(model);
        losses[step] = model->mean_loss;
        tabpfn_backward(model);
        tabpfn_update(model, opt, step);
    }
}

int main(int argc, char** argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DEBUG_STATE.bin (written by scripts/tabpfn_reference.py --write-debug-state)\n", argv[0]);
        return 2;
    }
    TensorFile state;
    tensor_file_read(&state, argv[1]);
    const float* cfg = tensor_file_get(&state, "config", 13)->data;
    const int B = (int)cfg[0], R = (int)cfg[1], F = (int)cfg[2], S = (int)cfg[3];
    TabPFNConfig config = {(int)cfg[4], (int)cfg[5], (int)cfg[6], (int)cfg[7], (int)cfg[8]};
    OptimizerConfig opt = {cfg[9], (int)cfg[12], (int)cfg[11], cfg[10], 0.9f, 0.999f, 1e-8f, 1.0f};
    printf("reference: B %d R %d F %d S %d | E %d heads %d H %d L %d outputs %d | lr %g wd %g steps %d warmup %d\n", B, R,
           F, S, config.E, config.heads, config.H, config.L, config.outputs, opt.lr_max, opt.weight_decay, opt.total_steps,
           opt.warmup_steps);

    ActivationCapacity cap = {(long)B * R * (F + 1), (long)B * R, (long)B * R * F, B, F, R};
    Comm comm;
    comm_init_single(&comm);
    TabPFN model;
    ParallelConfig par = parallel_config_single(&comm);
    tabpfn_build(&model, config, cap, 1, &par);

    import_parameters(&model, &state); // parameters by PyTorch name into the flat layout
    tabpfn_upload_batch(&model, tensor_file_get(&state, "x", (long)B * R * F)->data,
                        tensor_file_get(&state, "y", (long)B * R)->data, B, R, F, S);
    tabpfn_zero_grad(&model);
    tabpfn_forward(&model);
    const long T = (long)B * (R - S);
    float* logits = (float*)mallocCheck((size_t)T * config.outputs * sizeof(float));
    device_copy_to_host(logits, model.acts.logits, (size_t)T * config.outputs * sizeof(float));
    allclose_report("logits", logits, tensor_file_get(&state, "logits", T * config.outputs)->data, T * config.outputs,
                    1e-5, 1e-5);
    free(logits);
    allclose_report("loss", &model.mean_loss, tensor_file_get(&state, "loss", 1)->data, 1, 1e-5, 1e-5);

    tabpfn_backward(&model);
    ParameterInfo info[NUM_PARAMETER_TENSORS];
    parameter_infos(info, config);
    float* grads = (float*)mallocCheck(model.num_parameters * sizeof(float));
    device_copy_to_host(grads, model.grads_memory, model.num_parameters * sizeof(float));
    const float* g = grads;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++)
        for (int l = 0; l < (info[i].per_layer ? config.L : 1); l++) {
            char name[128], grad_name[160];
            parameter_name(name, sizeof(name), &info[i], l);
            snprintf(grad_name, sizeof(grad_name), "grad.%s", name);
            long n = (long)parameter_layer_numel(&info[i]);
            const float* ref = tensor_file_get(&state, grad_name, n)->data;
            double max_ref = 0.0;
            for (long j = 0; j < n; j++) max_ref = fabs(ref[j]) > max_ref ? fabs(ref[j]) : max_ref;
            allclose_report(grad_name, g, ref, n, 1e-5 * max_ref + 1e-9, 1e-4);
            g += n;
        }
    free(grads);

    // 10 optimizer steps on the same batch
    const float* lrs = tensor_file_get(&state, "lrs", 10)->data;
    const float* ref_losses = tensor_file_get(&state, "train_losses", 10)->data;
    float losses[10], my_lrs[10];
    train_steps(losses, my_lrs, &model, &opt, 10);
    allclose_report("learning-rate schedule (warmup + cosine)", my_lrs, lrs, 10, 1e-9, 1e-6);
    allclose_report("losses of 10 AdamW steps", losses, ref_losses, 10, 1e-5, 0.0);

    // schedule-free AdamW, 10 steps from the same start
    const float* sfc = tensor_file_get(&state, "sf_config", 4)->data;
    OptimizerConfig sf = {sfc[0], (int)sfc[3], (int)sfc[2], sfc[1], 0.9f, 0.999f, 1e-8f, 1.0f, OPT_SCHEDULEFREE};
    import_parameters(&model, &state);
    tabpfn_optimizer_init(&model, OPT_SCHEDULEFREE);
    const float* sf_ref_lrs = tensor_file_get(&state, "sf_lrs", 10)->data;
    const float* sf_ref_losses = tensor_file_get(&state, "sf_losses", 10)->data;
    train_steps(losses, my_lrs, &model, &sf, 10);
    allclose_report("schedule-free learning rates (warmup, then constant)", my_lrs, sf_ref_lrs, 10, 1e-9, 1e-6);
    allclose_report("losses of 10 schedule-free AdamW steps", losses, sf_ref_losses, 10, 1e-5, 0.0);
    float* block = (float*)mallocCheck(model.num_parameters * sizeof(float));
    device_copy_to_host(block, model.params_memory, model.num_parameters * sizeof(float));
    compare_parameters("schedule-free y (the parameters)", block, &state, "sf_y", config);
    device_copy_to_host(block, model.avg_memory, model.num_parameters * sizeof(float));
    compare_parameters("schedule-free x (the average)", block, &state, "sf_x", config);
    free(block);
    tabpfn_free(&model);
    tensor_file_free(&state);
    return tests_finish();
}
