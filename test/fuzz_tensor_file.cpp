// libFuzzer target: the named-tensor file reader (model/tensor_file.h) and what predict does with
// an exported model: model_file_config (the shape from the tensors) and import_parameters into
// a small model of that shape. Any input must end in a clean read or a mosaic_fail (longjmp here).
#include "fuzz_model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    mosaic_error_quiet = 1; // failures are expected: no error lines
    TabPFN* model = fuzz_small_model(0);
    const char* path = fuzz_write_input(data, size, "tensor_file");
    static TensorFile file; // static: survives the longjmp
    memset(&file, 0, sizeof(file));
    if (setjmp(mosaic_fuzz_jump) == 0) {
        tensor_file_read(&file, path);
        // model_file_config reads the file again; give it only files whose lookups succeed, so
        // that its own failures (after it freed its copy) are the only ones it can take
        NamedTensor* fe = tensor_file_find(&file, "feature_encoder.linear_layer.weight");
        NamedTensor* d1 = tensor_file_find(&file, "decoder.linear1.weight");
        NamedTensor* d2 = tensor_file_find(&file, "decoder.linear2.weight");
        if (fe && d1 && d2 && fe->ndim == 2 && d1->ndim == 2 && d2->ndim == 2) {
            TabPFNConfig c = model_file_config(path, 4);
            const TabPFNConfig m = model->config;
            if (c.E == m.E && c.heads == m.heads && c.H == m.H && c.L == m.L && c.outputs == m.outputs)
                import_parameters(model, &file);
        }
    }
    fuzz_close_leftovers();
    if (!file.tensors) file.count = 0;
    tensor_file_free(&file);
    return 0;
}
