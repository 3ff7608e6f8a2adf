# GPU machines without MPI, OpenBLAS or a package registry (as this project's lent H100 was):
# Debian 12's OpenMPI and OpenBLAS, downloaded beforehand on a machine that has apt, are unpacked
# into /tmp/deb and the build points at them; NCCL comes from the machine's pip package
# nvidia-nccl. Source it from the repo root. Getting the packages (here, then carried along):
#   mkdir -p scripts/gpu_offline/debs && cd scripts/gpu_offline/debs && apt-get download \
#     libopenmpi-dev libopenmpi3 openmpi-bin openmpi-common libopenblas0-openmp libopenblas-openmp-dev \
#     libopenblas-dev libpmix2 libhwloc15 libevent-core-2.1-7 libevent-pthreads-2.1-7 libevent-2.1-7 \
#     libfabric1 libucx0 libibverbs1 libnl-3-200 libnl-route-3-200 librdmacm1 libpsm2-2 \
#     libpsm-infinipath1 libnuma1 libxnvctrl0 libmunge2 libgfortran5 libpciaccess0 libltdl7
# Then: bash scripts/gpu_offline/device.sh (build, native kernel tests, 50 steps GPU vs CPU),
# sanitize.sh (compute-sanitizer), bench.sh (ms per step against PyTorch on the same GPU).
set -u
START=$SECONDS
P=/tmp/deb; mkdir -p $P; for f in scripts/gpu_offline/debs/*.deb; do dpkg -x "$f" $P; done
LIB=$P/usr/lib/x86_64-linux-gnu
NCCL=$(python3 -c "import nvidia.nccl as m; print(list(m.__path__)[0])")
mkdir -p /tmp/nccl/lib; ln -sf $NCCL/lib/libnccl.so.2 /tmp/nccl/lib/libnccl.so
export OPAL_PREFIX=$P/usr PATH=$P/usr/bin:$PATH
export LD_LIBRARY_PATH=$LIB:$LIB/openmpi/lib:$LIB/openblas-openmp:$NCCL/lib:${LD_LIBRARY_PATH:-}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader OMPI_MCA_pml=ob1
export MOSAIC_PYTHON=$(command -v python3)
MPI_CFLAGS="-I$LIB/openmpi/include -I$LIB/openmpi/include/openmpi"
MPI_LIBS="-L$LIB/openmpi/lib -lmpi_cxx -lmpi"
export CPATH=$P/usr/include/x86_64-linux-gnu/openblas-openmp:$NCCL/include LIBRARY_PATH=/tmp/nccl/lib:$LIB
