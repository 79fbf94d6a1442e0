#!/usr/bin/env bash
# One prepared GPU session (device machine): environment, throughput benchmark, seed tables.
# Usage there: bash experiments/gpu_session.sh <data_dir> <out_dir> <benchmark_seconds> <tables_seconds>
# Everything is time-boxed; results are packed into <out_dir>/gpu_results.tgz even if a step fails.
# The device machine has no ../shared, so carry the data (ignored by git, 30 MB):
#   mkdir -p .gpu_data/mnist && cp ../shared/data/cifar10-jpeg.tar.gz .gpu_data/ && cp ../shared/data/mnist/* .gpu_data/mnist/
# then run there: bash experiments/gpu_session.sh .gpu_data $OUT 170 300   (carry: [".gpu_data"])
set -uo pipefail
DATA=${1:-.gpu_data}; OUTDIR=${2:-/tmp/gpu_out}; BENCH_S=${3:-150}; TABLES_S=${4:-300}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD JAXPET_DATA_DIR=$DATA JAXPET_CACHE_DIR=/tmp/jaxpet_cache
R=/tmp/gpu_results; rm -rf $R; mkdir -p $R "$OUTDIR"
pack() { tar czf "$OUTDIR/gpu_results.tgz" --exclude='*.npz' -C /tmp gpu_results; }
trap pack EXIT
{ nvidia-smi; python -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"; } > $R/env.txt 2>&1
cat $R/env.txt
# The product against the loop and PyTorch at K=1/8/64 (shadow width), both precisions, mi_face timing.
timeout $((BENCH_S + 90)) python experiments/benchmark.py --workdir=$R/benchmark --max_seconds=$BENCH_S \
  --workloads=cifar10_shadow --num_models=1,8,64 --strategies=vmap,loop,torch \
  --precisions=bfloat16,float32 --examples_per_model=2048 --alsologtostderr > $R/benchmark.log 2>&1
# Target width, many models: the rate behind the 256 x 50 epochs x 25,000 projection.
timeout 240 python experiments/benchmark.py --workdir=$R/benchmark_target --max_seconds=120 \
  --workloads=cifar10_target --num_models=64,256 --strategies=vmap --precisions=bfloat16 \
  --examples_per_model=1024 --inversion_classes=0 --alsologtostderr > $R/benchmark_target.log 2>&1
tail -30 $R/benchmark_target.log
tail -30 $R/benchmark.log
# Full-size audit of the seed's CIFAR-10 CNN: 16 references + the target, all 50,000 candidates.
timeout 300 python experiments/audit.py --model=seed_cnn --data=cifar10 --num_references=16 \
  --epochs=30 --population_size=10000 --workdir=$R/audit_cifar10 --alsologtostderr > $R/audit.log 2>&1
tail -15 $R/audit_cifar10/summary.md
timeout $((TABLES_S + 150)) python experiments/seed_tables.py --workdir=$R/seed_tables --max_seconds=$TABLES_S \
  --alsologtostderr > $R/seed_tables.log 2>&1
tail -20 $R/seed_tables.log
