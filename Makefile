# Mosaic build. CPU binaries always (g++, OpenMP, OpenBLAS through cblas).
#   make train_tabpfn   the trainer
#   make test           build and run every test; non-zero exit on any failure
#   make bench          benchmarks, JSON lines on stdout
CXX ?= g++
PYTHON ?= /usr/bin/python3
# -march=native only where the compiler accepts it
NATIVE := $(shell $(CXX) -march=native -x c++ -E /dev/null >/dev/null 2>&1 && echo -march=native)
CXXFLAGS ?= -O3 $(NATIVE)
CXXFLAGS += -std=c++17 -fopenmp -Wall -Wno-unused-function
# MPI through the wrapper's flags, so the compiler stays $(CXX)
MPI_CFLAGS := $(shell mpicxx --showme:compile 2>/dev/null)
MPI_LIBS := $(shell mpicxx --showme:link 2>/dev/null)
CXXFLAGS += $(MPI_CFLAGS)
# OpenBLAS built on OpenMP shares our thread pool; the pthread build spins its own threads
# against ours (seen here: 10x slower steps when a core is busy). Fall back to any -lopenblas.
BLAS_DIR := $(firstword $(wildcard /usr/lib/$(shell $(CXX) -dumpmachine)/openblas-openmp))
LDLIBS = $(if $(BLAS_DIR),-L$(BLAS_DIR) -Wl$(comma)-rpath$(comma)$(BLAS_DIR)) -lopenblas -lm $(MPI_LIBS)
comma := ,
# every header, so a change anywhere rebuilds what includes it
HEADERS := $(wildcard model/*.h attention/*.h comm/*.h dataloader/*.h test/*.h)

TESTS := build/test_ops_gradcheck build/test_flash_attention build/test_model_gradcheck \
         build/test_dataloader build/test_pytorch_reference build/test_sharded

.PHONY: all test bench clean
all: train_tabpfn

train_tabpfn: train_tabpfn.cu $(HEADERS)
	$(CXX) $(CXXFLAGS) -x c++ $< -o $@ $(LDLIBS)

build/%: test/%.cpp $(HEADERS)
	@mkdir -p build
	$(CXX) $(CXXFLAGS) $< -o $@ $(LDLIBS)

test: train_tabpfn $(TESTS)
	bash test/run_all.sh

bench: train_tabpfn
	bash scripts/bench.sh

clean:
	rm -rf build train_tabpfn
