# Mosaic build. CPU binaries always (g++, OpenMP, OpenBLAS through cblas).
#   make train_tabpfn        the trainer
#   make test                build and run every test (the CUDA kernel tests included); non-zero exit on any failure
#   make test_cuda_kernels   only the CUDA kernel tests: emulated on the CPU (plain, ASan+UBSan, TSan),
#                            nvcc for sm_80/sm_90 with the ptxas check, native runs where a GPU exists
#   make bench               benchmarks, JSON lines on stdout
# build on every core: the test recipe itself starts only once everything it needs is built
MAKEFLAGS += -j$(shell nproc 2>/dev/null || echo 2)
CXX ?= g++
PYTHON ?= /usr/bin/python3
# -march=native only where the compiler accepts it
NATIVE := $(shell $(CXX) -march=native -x c++ -E /dev/null >/dev/null 2>&1 && echo -march=native)
CXXFLAGS ?= -O3 $(NATIVE)
# -fno-trapping-math: no code here reads FP exception flags, and without it gcc keeps the selects of
# fast_expf and gelu_erf as branches and vectorises neither (gelu and flash attention ran scalar)
CXXFLAGS += -std=c++17 -fopenmp -fno-trapping-math -Wall -Wno-unused-function
# MPI through the wrapper's flags, so the compiler stays $(CXX)
MPI_CFLAGS := $(shell mpicxx --showme:compile 2>/dev/null)
MPI_LIBS := $(shell mpicxx --showme:link 2>/dev/null)
CXXFLAGS += $(MPI_CFLAGS)
# OpenBLAS built on OpenMP shares our thread pool; the pthread build spins its own threads
# against ours (seen here: 10x slower steps when a core is busy). Fall back to any -lopenblas.
BLAS_DIR := $(firstword $(wildcard /usr/lib/$(shell $(CXX) -dumpmachine)/openblas-openmp))
# The float GEMM library (model/gemm_cpu.h): onednn (Debian's libdnnl-dev, 1.2x faster than
# OpenBLAS on the step's shapes, measured by build/bench_gemm) where its header is found, else
# openblas. Double precision (the gradient checks) always goes through OpenBLAS.
GEMM ?= $(if $(wildcard /usr/include/dnnl.h),onednn,openblas)
ifeq ($(GEMM),onednn)
GEMM_FLAGS := -DMOSAIC_GEMM_ONEDNN
GEMM_LIBS := -ldnnl
else ifneq ($(GEMM),openblas)
$(error GEMM=$(GEMM): choose onednn or openblas)
endif
CXXFLAGS += $(GEMM_FLAGS)
LDLIBS = $(if $(BLAS_DIR),-L$(BLAS_DIR) -Wl$(comma)-rpath$(comma)$(BLAS_DIR)) $(GEMM_LIBS) -lopenblas -lm $(MPI_LIBS)
comma := ,
# every header, so a change anywhere rebuilds what includes it
HEADERS := $(wildcard model/*.h attention/*.h comm/*.h dataloader/*.h test/*.h)

TESTS := build/test_ops_gradcheck build/test_flash_attention build/test_model_gradcheck \
         build/test_dataloader build/test_pytorch_reference build/test_sharded

# ----------------------------------------------------------------------------------------------
# CUDA kernel tests: test/test_cuda_*.cu (each kernel against its CPU twin) and the emulator's
# self-test. The CPU build above never sees CUDA; these are separate binaries:
#   build/emu_%    clang++ against test/simt_emulator.h: every CUDA thread a fiber on the CPU
#   build/asan_%   the same under AddressSanitizer + UndefinedBehaviorSanitizer
#   build/tsan_%   the same under ThreadSanitizer (only barriers order the threads)
#   build/nvcc_%   nvcc for the GPU (ARCH, default sm_80 and sm_90); ptxas -v report in build/ptxas_%.txt,
#                  checked by test/check_ptxas.py (no spills, no warnings). Only where nvcc exists.
# clang++ only: g++ ignores the section attribute the emulator puts on static __shared__ variables
# of template kernels. No -fopenmp: the CPU twins run serially, which keeps TSan's view clean.
CLANGXX ?= clang++
CUDA_HOME ?= /usr/local/cuda
NVCC ?= $(firstword $(shell command -v nvcc 2>/dev/null) $(wildcard $(CUDA_HOME)/bin/nvcc))
ARCH ?= 80 90
CUDA_TESTS := $(sort $(basename $(notdir $(wildcard test/test_cuda_*.cu))))
EMU_TESTS := test_simt_emulator $(CUDA_TESTS)
CUDA_SOURCES := $(HEADERS) $(wildcard model/*.cuh attention/*.cuh)
BLAS_LIBS = $(if $(BLAS_DIR),-L$(BLAS_DIR) -Wl$(comma)-rpath$(comma)$(BLAS_DIR)) -lopenblas -lm
NVCC_BLAS_LIBS = $(if $(BLAS_DIR),-L$(BLAS_DIR) -Xlinker -rpath -Xlinker $(BLAS_DIR)) -lopenblas -lm
# the emulation compiles against the real CUDA headers (the toolkit's, or Debian's nvidia-cuda-dev)
CUDA_INC := $(patsubst %/,%,$(dir $(firstword $(wildcard $(CUDA_HOME)/include/cuda_runtime.h /usr/include/cuda_runtime.h))))
NEED_CUDA_INC = @test -n "$(CUDA_INC)" || { echo "error: cuda_runtime.h not found in $(CUDA_HOME)/include or /usr/include: the emulated kernel tests build against the real CUDA headers (set CUDA_HOME)"; exit 1; }
EMU_FLAGS := -std=c++17 -O1 -g -DMOSAIC_SIMT_EMULATION -I$(CUDA_INC) -Wall -Wno-unused-function
# -fsanitize=bounds everywhere: ASan cannot see overruns of static shared arrays (one section, no redzones)
EMU_SAN := -fsanitize=bounds -fno-sanitize-recover=bounds
ASAN_SAN := -fsanitize=address,undefined -fsanitize=bounds -fno-sanitize-recover=all
TSAN_SAN := -fsanitize=thread -fsanitize=bounds -fno-sanitize-recover=bounds
NVCC_FLAGS := -std=c++17 -O3 $(foreach a,$(ARCH),-gencode arch=compute_$(a),code=sm_$(a)) -Xptxas -v -Xcompiler -fopenmp,-Wall,-Wno-unused-function
EMU_BINS := $(foreach v,emu asan tsan,$(addprefix build/$(v)_,$(EMU_TESTS)))
NVCC_BINS := $(if $(NVCC),$(addprefix build/nvcc_,$(CUDA_TESTS)))
CUDA_ENV = ARCH="$(ARCH)" NVCC="$(NVCC)" CUDA_TESTS="$(CUDA_TESTS)" EMU_TESTS="$(EMU_TESTS)"

.PHONY: all test bench clean test_cuda_kernels cuda_kernel_tests
all: train_tabpfn

train_tabpfn: train_tabpfn.cu $(HEADERS)
	$(CXX) $(CXXFLAGS) -x c++ $< -o $@ $(LDLIBS)

build/%: test/%.cpp $(HEADERS)
	@mkdir -p build
	$(CXX) $(CXXFLAGS) $< -o $@ $(LDLIBS)

build/emu_%: test/%.cu $(CUDA_SOURCES)
	@mkdir -p build
	$(NEED_CUDA_INC)
	$(CLANGXX) $(EMU_FLAGS) $(EMU_SAN) -x c++ $< -o $@ $(BLAS_LIBS)

build/asan_%: test/%.cu $(CUDA_SOURCES)
	@mkdir -p build
	$(NEED_CUDA_INC)
	$(CLANGXX) $(EMU_FLAGS) $(ASAN_SAN) -x c++ $< -o $@ $(BLAS_LIBS)

build/tsan_%: test/%.cu $(CUDA_SOURCES)
	@mkdir -p build
	$(NEED_CUDA_INC)
	$(CLANGXX) $(EMU_FLAGS) $(TSAN_SAN) -x c++ $< -o $@ $(BLAS_LIBS)

# compiler and ptxas output (registers, shared memory, spills per kernel) kept for the checker;
# a warning does not stop the build here, the checker fails on it with the table printed
build/nvcc_%: test/%.cu $(CUDA_SOURCES)
	@mkdir -p build
	$(NVCC) $(NVCC_FLAGS) -x cu $< -o $@ -lcublas $(NVCC_BLAS_LIBS) > build/ptxas_$*.txt 2>&1 || { cat build/ptxas_$*.txt; exit 1; }

# build only
cuda_kernel_tests: $(EMU_BINS) $(NVCC_BINS)

test_cuda_kernels: $(EMU_BINS) $(NVCC_BINS)
	$(CUDA_ENV) bash test/run_cuda_kernels.sh

test: train_tabpfn $(TESTS) $(EMU_BINS) $(NVCC_BINS)
	$(CUDA_ENV) bash test/run_all.sh

bench: train_tabpfn $(if $(and $(wildcard /usr/include/dnnl.h),$(wildcard /usr/include/libxsmm.h)),build/bench_gemm)
	bash scripts/bench.sh

# the step's GEMM shapes per library (OpenBLAS, oneDNN, libxsmm): needs libdnnl-dev and libxsmm-dev
build/bench_gemm: test/bench_gemm.cpp
	@mkdir -p build
	@test -f /usr/include/dnnl.h -a -f /usr/include/libxsmm.h || { echo "error: build/bench_gemm needs libdnnl-dev and libxsmm-dev (bash scripts/install_deps.sh)"; exit 1; }
	$(CXX) -O3 $(NATIVE) -std=c++17 -fopenmp $< -o $@ $(if $(BLAS_DIR),-L$(BLAS_DIR) -Wl$(comma)-rpath$(comma)$(BLAS_DIR)) -ldnnl -lxsmmext -lxsmm -lopenblas -lpthread -lrt -ldl -lm

clean:
	rm -rf build train_tabpfn

# ----------------------------------------------------------------------------------------------
# The GPU trainer: the same train_tabpfn.cu with -DMOSAIC_CUDA (CUDA leaf ops, NCCL transport).
#   train_tabpfn_cuda       nvcc for ARCH (default sm_80 and sm_90), cuBLAS + NCCL + MPI, warnings
#                           are errors; part of `make` where nvcc is found
#   train_tabpfn_emulated   clang++ against test/simt_emulator.h and the test-only CUDA runtime,
#                           cuBLAS and NCCL shims: the whole GPU trainer on the CPU, for CI
#                           (test/test_gpu_trainer.sh compares it with ./train_tabpfn)
# MPI reaches nvcc through its host compiler (-Xcompiler) and linker (-L, -l as they are).
NVCC_MPI_CFLAGS := $(foreach f,$(MPI_CFLAGS),-Xcompiler $(f))
NVCC_MPI_LIBS := $(foreach f,$(MPI_LIBS),$(if $(filter -L% -l%,$(f)),$(f),-Xlinker $(f)))
NVCC_TRAIN_FLAGS := -std=c++17 -O3 -DMOSAIC_CUDA $(foreach a,$(ARCH),-gencode arch=compute_$(a),code=sm_$(a)) \
                    -Werror all-warnings -Xcompiler -fopenmp,-Wall,-Wno-unused-function,-Werror
EMU_TRAIN_FLAGS := -std=c++17 -O2 -g -DMOSAIC_CUDA -DMOSAIC_SIMT_EMULATION -I$(CUDA_INC) -Wall -Wno-unused-function $(EMU_SAN)

all: $(if $(NVCC),train_tabpfn_cuda)
test: train_tabpfn_emulated $(if $(NVCC),train_tabpfn_cuda)
.PHONY: gpu_trainers
gpu_trainers: train_tabpfn_emulated $(if $(NVCC),train_tabpfn_cuda)

train_tabpfn_cuda: train_tabpfn.cu $(CUDA_SOURCES)
	@test -n "$(NVCC)" || { echo "error: nvcc not found (set NVCC or CUDA_HOME): train_tabpfn_cuda needs the CUDA toolkit"; exit 1; }
	$(NVCC) $(NVCC_TRAIN_FLAGS) $(NVCC_MPI_CFLAGS) -x cu $< -o $@ -lcublas -lnccl $(NVCC_MPI_LIBS)

train_tabpfn_emulated: train_tabpfn.cu $(CUDA_SOURCES)
	$(NEED_CUDA_INC)
	$(CLANGXX) $(EMU_TRAIN_FLAGS) $(MPI_CFLAGS) -x c++ $< -o $@ $(BLAS_LIBS) $(MPI_LIBS)
.PHONY: clean_gpu_trainers
clean: clean_gpu_trainers
clean_gpu_trainers:
	rm -f train_tabpfn_cuda train_tabpfn_emulated

# ----------------------------------------------------------------------------------------------
# GPU shims self-test (helper E): test/test_gpu_shims.cu checks the test-only CUDA runtime with
# deferred streams and events (test/cuda_runtime_shim.h) and NCCL on MPI (test/nccl_shim.h).
# Emulated builds only (plain, ASan+UBSan, TSan), linked with MPI; test/run_cuda_kernels.sh runs
# them single-process and the plain one under mpirun -np 2 (--nccl-only).
SHIM_TEST_BINS := $(foreach v,emu asan tsan,build/$(v)_test_gpu_shims)
SHIM_TEST_SOURCES := test/test_gpu_shims.cu $(CUDA_SOURCES)
cuda_kernel_tests test_cuda_kernels test: $(SHIM_TEST_BINS)

build/emu_test_gpu_shims: $(SHIM_TEST_SOURCES)
	@mkdir -p build
	$(NEED_CUDA_INC)
	$(CLANGXX) $(EMU_FLAGS) $(EMU_SAN) $(MPI_CFLAGS) -x c++ $< -o $@ $(MPI_LIBS)

build/asan_test_gpu_shims: $(SHIM_TEST_SOURCES)
	@mkdir -p build
	$(NEED_CUDA_INC)
	$(CLANGXX) $(EMU_FLAGS) $(ASAN_SAN) $(MPI_CFLAGS) -x c++ $< -o $@ $(MPI_LIBS)

build/tsan_test_gpu_shims: $(SHIM_TEST_SOURCES)
	@mkdir -p build
	$(NEED_CUDA_INC)
	$(CLANGXX) $(EMU_FLAGS) $(TSAN_SAN) $(MPI_CFLAGS) -x c++ $< -o $@ $(MPI_LIBS)

# ----------------------------------------------------------------------------------------------
# Hardening (issue 8): libFuzzer targets and the AddressSanitizer + UBSan build of the CPU tests.
#   make fuzz        build/fuzz_<target>: clang++ -fsanitize=fuzzer,address,undefined, -DMOSAIC_FUZZ
#                    (mosaic_fail longjmps back to the harness); test/run_fuzzers.sh runs each for
#                    FUZZ_SECONDS (30) on test/fuzz_corpus/<target>/
#   make asan_cpu    build/asan_cpu/: the CPU test binaries and the trainer under g++
#                    -fsanitize=address,undefined (float-cast-overflow too), no recovery, -O1
FUZZ_TARGETS := $(sort $(basename $(notdir $(wildcard test/fuzz_*.cpp))))
FUZZ_BINS := $(addprefix build/,$(FUZZ_TARGETS))
FUZZ_FLAGS := -std=c++17 -O1 -g -DMOSAIC_FUZZ -Wall -Wno-unused-function -fsanitize=fuzzer,address,undefined \
              -fno-sanitize-recover=all
.PHONY: fuzz asan_cpu
fuzz: $(FUZZ_BINS)
build/fuzz_%: test/fuzz_%.cpp $(HEADERS)
	@mkdir -p build
	$(CLANGXX) $(FUZZ_FLAGS) $(MPI_CFLAGS) $< -o $@ $(BLAS_LIBS) $(MPI_LIBS)

ASAN_CPU_FLAGS := -std=c++17 -O1 -g -fno-omit-frame-pointer -fopenmp -Wall -Wno-unused-function $(MPI_CFLAGS) \
                  -fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all
ASAN_CPU_BINS := $(addprefix build/asan_cpu/,test_ops_gradcheck test_model_gradcheck test_dataloader \
                 test_pytorch_reference test_sharded train_tabpfn)
asan_cpu: $(ASAN_CPU_BINS)
build/asan_cpu/train_tabpfn: train_tabpfn.cu $(HEADERS)
	@mkdir -p build/asan_cpu
	$(CXX) $(ASAN_CPU_FLAGS) -x c++ $< -o $@ $(LDLIBS)
build/asan_cpu/%: test/%.cpp $(HEADERS)
	@mkdir -p build/asan_cpu
	$(CXX) $(ASAN_CPU_FLAGS) $< -o $@ $(LDLIBS)
test: fuzz asan_cpu
