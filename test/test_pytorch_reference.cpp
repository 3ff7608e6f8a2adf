// The model against the PyTorch reference (scripts/tabpfn_reference.py, run in float64):
// the same parameters and batch must give the same logits, loss and every parameter
// gradient, and 10 AdamW steps (with clipping, warmup and cosine decay) the same losses.
// usage: test_pytorch_reference DEBUG_STATE.bin
// Tolerances (float32 here vs float64 there): logits and loss |err| <= 1e-5 + 1e-5 |ref|;
// gradients |err| <= 1e-5 * max|ref of that tensor| + 1e-4 |ref|; step losses |err| <= 1e-5.
#include "test_util.h"
#include "../model/tabpfn.h"
#include "../model/model_file.h"

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
    for (int step = 0; step < 10; step++) {
        my_lrs[step] = learning_rate_at(&opt, step);
        tabpfn_zero_grad(&model);
        tabpfn_forward(&model);
        losses[step] = model.mean_loss;
        tabpfn_backward(&model);
        tabpfn_update(&model, &opt, step);
    }
    allclose_report("learning-rate schedule (warmup + cosine)", my_lrs, lrs, 10, 1e-9, 1e-6);
    allclose_report("losses of 10 AdamW steps", losses, ref_losses, 10, 1e-5, 0.0);
    tabpfn_free(&model);
    tensor_file_free(&state);
    return tests_finish();
}
