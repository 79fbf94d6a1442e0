#!/usr/bin/env bash
# One prepared GPU session, within 10 minutes on a bare H200 machine: the throughput benchmark
# with the memory estimate, a 64-model LiRA run and the full-size CIFAR-10 seed rows.
#
# Usage there, from the repository root:  bash experiments/gpu_session.sh <data_dir> <out_dir>
# The machine has jax (CUDA), flax, optax, chex, absl, orbax, scikit-learn, torch and
# matplotlib, no tensorflow-datasets and no internet: nothing is installed; jaxpet runs from
# this copy through PYTHONPATH (or `pip install --no-deps -e .`). It has no ../shared, so
# carry the data (ignored by git, 19 MB):
#   mkdir -p .gpu_data && cp ../shared/data/cifar10-jpeg.tar.gz .gpu_data/
# then run there: bash experiments/gpu_session.sh .gpu_data $OUT   (carry: [".gpu_data"])
# Every step is time-boxed with `timeout` (the boxes add up to 575 s); results are packed into
# <out_dir>/gpu_results.tgz after every step and on exit, with <out_dir>/goals.md beside it,
# even if a step fails. A benchmark cell that runs out of device memory is recorded as such
# and the sweep goes on.
# SMOKE=1 runs the same commands at toy sizes (CPU check of every flag; PYTHON=.venv/bin/python).
#
# Goals it is held to (issue 14):
#   G1 256 target-width CIFAR-10 CNNs x 50 epochs x 25,000 images each in under 10 minutes on
#      one H200: projected from the cifar10_target K=256 vmap bf16 rate, and >= 40% of the
#      bf16 dense peak (989.4 TFLOP/s, the datasheet figure the benchmark divides by; an
#      8192^3 bf16 GEMM measured about 790 TFLOP/s on these machines). 256 x 50 x 25,000 x
#      464.3 MFLOP = 1.49e17 FLOP: 375 s at 40% of peak; 10 minutes needs 25%.
#   G2 cifar10_shadow, K=64: vmap >= 20x PyTorch one model after another, and >= 10x the
#      jitted loop (the K=1 program called 64 times), same run.
#
# Expected runtime per step. FLOP per training image from XLA's cost analysis of one train
# step (the flops_per_epoch the benchmark reports, / images), batch 128, conv form:
# cifar10_shadow 121.6 MFLOP, cifar10_target 464.3 MFLOP (a forward pass is ~1/3 of that).
# ASSUMED fractions of the H200's dense peak (bf16 989.4, fp32/TF32 494.7 TFLOP/s): 40% for
# vmapped ensembles of K >= 64 (the goal), 10% at K=8, 3% for one model at a time (K=1
# programs, map, loop, PyTorch, the seed rows' single models: latency-bound, ~35 kernels per
# step); 5 s per compiled program (repeats are served by the persistent compilation cache);
# 10 s per process start; 8 s to decode CIFAR-10's 60,000 JPEGs once (measured on a 2-core CPU).
#   0 environment                                      ~10 s              (box  15 s)
#   1 benchmark, cifar10_target, vmap K=64/128/256 (128 in case 256 does not fit: the CPU's
#     compiled program needs ~0.6 GiB per model at batch 128, docs/performance.md), bf16 and fp32, 3 epochs
#     of 2,048 images per model per cell, memory estimate fitted through K=64 and 256: 10 s
#     of training (7.3e14 FLOP per K=256 cell) + 12 programs x 5 s + start
#                                                        ~80 s  (box  95 s)
#   2 benchmark, cifar10_shadow, vmap/map/loop/torch x K=1/8/64/256, fp32 (and torch) then
#     bf16, 3 epochs of 1,024 images per model per cell, memory estimate through K=8 and
#     64: 34 s of training (map, loop and torch at 3%) + 24 programs x 5 s + start
#                                                        ~167 s (box 155 s; --max_seconds=115
#     starts no new cell after 115 s, so the last bf16 cells may be cut)
#   3 LiRA, 64 target-width models x 50 epochs x 25,000 members, bf16: 3.7e16 FLOP = 94 s
#     at 40%, logits of 64 x 60,000 images x 2 queries 3 s, 3 programs, data, start, one
#     checkpoint, scoring 4 targets against 63 references (~36 s on a 2-core CPU)
#                                                        ~171 s (box 215 s: fits down to ~30%)
#   4 seed rows, CIFAR-10, full size (12,500 members, target + shadow CNN, fp32, K=1 each):
#     the headline 50-epoch pair, 3.7e14 FLOP = 25 s at 3% of fp32 peak, ~6 programs, then
#     its 3-posterior row from the same trained models; --max_seconds=70 starts no later case
#                                                        ~81 s  (box  95 s)
#   total expected ~509 s; boxes 575 s (+ 3 s grace each before a box's KILL).
#   5 (WRN=1 adds it after step 4; WRN=only runs steps 0 and 5 alone, in a session of its own)
#     WideResNet-28-2 with LiRA's recipe (jaxpet.models.lira_recipe: SGD momentum 0.9, L2 5e-4,
#     lr 0.1 cosine, batch 256, flip + 4-pixel shift), bf16, vmap: K=16 x 2 epochs of 25,000
#     CIFAR-10 images (the second epoch timed: the rate a 16-model LiRA run trains at), then
#     K=64 x 2 epochs of 4,096 (does the rate grow with K?). 1,319.6 MFLOP per training image
#     (XLA's cost analysis of one step at batch 256; an inference forward pass 447.0 MFLOP):
#     K=16 1.06e15 FLOP = 5 s at 20% of bf16 peak, 21 s at 5%; K=64 6.9e14 FLOP = 3.5 / 14 s
#     (small-channel convolutions, grouped under vmap: their fraction of peak is what this
#     step measures); 2 training programs + 1 for the FLOP count x ~20 s, data, start
#                                                        ~110 s (box 170 s; with WRN=1 the
#     boxes add up to 745 s, past a 10-minute command: run WRN=only where time is short)
#     Memory: XLA's CPU memory analysis of one step at batch 256 is ~1.5 GiB per model (bf16
#     and fp32 alike), so K=64 needs ~96 GiB and a 256-model run goes in groups of <= 64.
#     Expected time of a full LiRA run, K models x 100 epochs (LiRA's scripts/train_demo.sh)
#     x 25,000 members x 1.32 GFLOP (K=16: 5.3e16 FLOP), at 40% / 20% / 5% of bf16 peak:
#       K=16:   133 s /   267 s /  1,070 s
#       K=64:   533 s / 1,070 s /  4,270 s
#       K=256: 2,130 s / 4,270 s / 17,100 s (36 min / 71 min / 4.7 h)
#     The full runs themselves, each a session of its own (the LiRA experiment with the same
#     model and recipe; --precision=bfloat16; K=256 under lax.map, one model's memory at a time):
#       python experiments/lira.py --dataset=cifar10 --model=wrn --recipe=lira --epochs=100 \
#         --num_models=16 --precision=bfloat16 --workdir=runs/lira_wrn28_2_16
#       ... --num_models=64 --strategy=vmap ...   ... --num_models=256 --strategy=map ...
#     laid beside LiRA's code (16 models: online AUC 0.668, TPR@0.1%FPR 1.7%; fixed variance
#     0.686 / 5.9%) with --lira_convention=code --fpr_rule=lt, and RMIA's paper (254: 0.7225).
#     The step prints the same from its measured rate (goals.md, WRN line). On the 2-core
#     development CPU one model (K=1, fp32, batch 256, its CPU forms) trains ~50 images/s
#     (medians 46 and 54 of two 3-step runs, the CPU shared): 16 models would take ~9 days.
set -uo pipefail
DATA=${1:-.gpu_data}; OUTDIR=${2:-/tmp/gpu_out}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD JAXPET_DATA_DIR=$DATA JAXPET_CACHE_DIR=/tmp/jaxpet_cache
# JAX may take 90% of the GPU (PyTorch's reference cells need little); compiled programs are
# kept on disk, so a program compiled twice (the step FLOP count per cell, the loop's K=1
# epoch) is compiled once.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
export JAX_COMPILATION_CACHE_DIR=/tmp/jax_compilation_cache
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0

# Sizes (the GPU session's), and SMOKE=1's toy sizes for checking the commands on a CPU.
T_KS=64,128,256; T_EX=2048; T_FIT=64,256
S_KS=1,8,64,256; S_EX=1024; S_FIT=8,64
BATCH=128; BENCH_EXTRA=()
L_MODELS=64; L_EPOCHS=50; L_TARGETS=4; L_EXTRA=()
SEED_EXTRA=()
B0=15; B1=95; B2=155; B2_MAX=115; B3=215; B4=95; B4_MAX=70
W_SIZES=16:25000,64:4096; W_BATCH=256; W_TINY=0; B5=170  # step 5: K:members per model
if [[ ${SMOKE:-0} == 1 ]]; then
  T_KS=2,4; T_EX=32; T_FIT=2,4; S_KS=1,2; S_EX=32; S_FIT=1,2; BATCH=16
  BENCH_EXTRA=(--device_memory_gib=139)
  L_MODELS=4; L_EPOCHS=1; L_TARGETS=1
  L_EXTRA=(--pool_size=256 --population_size=128 --width_scale=0.125 --batch_size=32)
  SEED_EXTRA=(--train_size=256 --val_size=32 --attack_epochs=1 --width_scale=0.125
              --batch_size=64 --cases=cifar10_p10_e30)
  B0=60; B1=300; B2=600; B2_MAX=300; B3=600; B4=900; B4_MAX=0
  W_SIZES=2:256,4:128; W_BATCH=32; W_TINY=1; B5=600
fi
WRN=${WRN:-0}
[[ $WRN == 0 || $WRN == 1 || $WRN == only ]] ||
  { echo "WRN must be 0 (no step 5), 1 (add it) or only (steps 0 and 5), got '$WRN'."; exit 2; }

R=/tmp/gpu_results; rm -rf $R $JAX_COMPILATION_CACHE_DIR; mkdir -p $R "$OUTDIR"
pack() {
  tar czf "$OUTDIR/gpu_results.tgz" --exclude='*.npz' --exclude='checkpoints-*' \
    -C /tmp gpu_results 2>/dev/null
  [[ -f $R/goals.md ]] && cp $R/goals.md "$OUTDIR/"
  return 0
}
trap pack EXIT
trap 'exit 143' TERM INT
step() {  # step <name> <seconds> <command...>: time-boxed, logged, timed, packed
  local name=$1 box=$2; shift 2
  local tick=$SECONDS
  echo "=== $name (box ${box}s)"
  timeout -k 3 "$box" "$@" > "$R/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - tick))s" | tee -a $R/steps.txt
  grep -E "^(memory|I.*memory,)|Error|error:" "$R/$name.log" | tail -8
  pack
}

# 0: what the machine is.
cat > $R/env.py <<'EOF'
import sys

import flax, jax, optax, orbax.checkpoint  # noqa: F401 (present?)

d = jax.devices()[0]
print("python", sys.version.split()[0], "jax", jax.__version__, "flax", flax.__version__,
      "optax", optax.__version__, jax.devices(), d.device_kind)
try:
    print("bytes_limit GiB", (d.memory_stats() or {}).get("bytes_limit", 0) / 2**30)
except Exception as e:  # CPU backends may not implement it
    print("memory_stats:", e)
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.cuda.is_available())
except ImportError:
    print("no torch")
EOF
step env $B0 bash -c "nvidia-smi 2>/dev/null | head -15; ls -l $DATA; $PY $R/env.py"
cat $R/env.log

if [[ $WRN != only ]]; then  # steps 1-4: the session's own goals
# 1: target width, many models: the rate behind G1, and its memory estimate.
step benchmark_target $B1 $PY experiments/benchmark.py --workdir=$R/benchmark_target \
  --workloads=cifar10_target --num_models=$T_KS --strategies=vmap \
  --precisions=bfloat16,float32 --examples_per_model=$T_EX --batch_size=$BATCH \
  --memory_fit_models=$T_FIT --inversion_classes=0 "${BENCH_EXTRA[@]}" --alsologtostderr

# 2: shadow width, every strategy and PyTorch at K=1/8/64/256 (G2); fp32 first (PyTorch's).
step benchmark_shadow $B2 $PY experiments/benchmark.py --workdir=$R/benchmark_shadow \
  --workloads=cifar10_shadow --num_models=$S_KS --strategies=vmap,map,loop,torch \
  --precisions=float32,bfloat16 --examples_per_model=$S_EX --batch_size=$BATCH \
  --memory_fit_models=$S_FIT --max_seconds=$B2_MAX --inversion_classes=0 "${BENCH_EXTRA[@]}" \
  --alsologtostderr

# 3: LiRA and RMIA with 64 models trained at once (bf16), 4 of them scored as the target.
step lira64 $B3 $PY experiments/lira.py --workdir=$R/lira64 --dataset=cifar10 \
  --num_models=$L_MODELS --epochs=$L_EPOCHS --precision=bfloat16 --num_targets=$L_TARGETS \
  --checkpoint_every=$L_EPOCHS "${L_EXTRA[@]}" --alsologtostderr

# 4: the seed's CIFAR-10 rows at full size, the headline 50-epoch ones first.
step seed_tables $B4 $PY experiments/seed_tables.py --workdir=$R/seed_tables --datasets=cifar10 \
  --max_seconds=$B4_MAX "${SEED_EXTRA[@]}" --alsologtostderr
fi

# 5 (WRN=1 or WRN=only): WideResNet-28-2 with LiRA's recipe, vmapped; rates and projected times.
cat > $R/wrn.py <<'EOF'
"""WRN-28-2 (LiRA's recipe, vmap): images/s at each K, FLOPs per image, projected LiRA times.

argv: K:members,... batch tiny(0/1) precision out_dir. The second epoch of each K is timed
(the first includes compiling). Writes out_dir/results.json after every K.
"""
import json, pathlib, sys, time

import jax
import numpy as np

from jaxpet import data, models, splits, training
from jaxpet.benchmark import throughput
from jaxpet.benchmark.workloads import peak_flops

sizes = [tuple(int(v) for v in kv.split(":")) for kv in sys.argv[1].split(",")]
batch, tiny, precision = int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
out = pathlib.Path(sys.argv[5]); out.mkdir(parents=True, exist_ok=True)
cifar = data.load_dataset("cifar10")
images, labels = cifar.train.images, cifar.train.labels
preprocess = data.normalizer("cifar10")
model = models.wide_resnet(precision=precision, tiny=tiny)
config = models.lira_recipe(epochs=2, batch_size=batch)
peak = peak_flops(jax.devices()[0], precision)
res = {"model": "WRN-10-1" if tiny else "WRN-28-2", "precision": precision, "batch_size": batch,
       "device": jax.devices()[0].device_kind, "peak_flops": peak, "cells": []}
save = lambda: (out / "results.json").write_text(json.dumps(res, indent=1))
state = None
for k, n in sizes:
    members = splits.random_member_sets(np.arange(len(labels)), k, n, seed=0)
    stamps = []
    mark = lambda e, s, m: (jax.block_until_ready(s.params), stamps.append(time.perf_counter()))
    start = time.perf_counter()
    try:
        result = training.train_ensemble(model, images, labels, members, config, seed=0,
                                         preprocess=preprocess, strategy="vmap",
                                         on_epoch_end=mark)
    except Exception as e:  # e.g. out of device memory: recorded, and the next K tried
        res["cells"].append({"num_models": k, "examples_per_model": n,
                             "error": f"{type(e).__name__}: {e}"[:400]})
        print(f"K={k}: {res['cells'][-1]['error']}", flush=True); save(); continue
    state = result.state
    cell = {"num_models": k, "examples_per_model": n, "first_epoch_s": stamps[0] - start,
            "epoch_s": stamps[1] - stamps[0], "images_per_s": k * n / (stamps[1] - stamps[0]),
            "loss": [float(h["loss"].mean()) for h in result.history]}
    res["cells"].append(cell); save()
    print(f"K={k} x {n}: first epoch (with compile) {cell['first_epoch_s']:.1f} s, timed epoch "
          f"{cell['epoch_s']:.1f} s = {cell['images_per_s']:.0f} images/s", flush=True)
measured = sorted((c["num_models"], c["images_per_s"]) for c in res["cells"] if "images_per_s" in c)
res["projected_s"] = {}
for k in (16, 64, 256):  # at the rate of the largest measured K <= k (the first one below it)
    rate = [r for m, r in measured if m <= k] or [r for _, r in measured[:1]]
    if rate:
        res["projected_s"][k] = k * 100 * 25_000 / rate[-1]
        print(f"projected LiRA run, {k} models x 100 epochs x 25,000 members: "
              f"{res['projected_s'][k] / 60:.1f} min", flush=True)
save()
if state is not None:  # FLOPs per training image from one K=1 step (a small compile), last
    one = jax.tree.map(lambda a: a[:1], state)
    res["flops_per_image"] = throughput.step_flops(model, config, preprocess, one, images,
                                                   labels) / batch
    print(f"{res['flops_per_image'] / 1e6:.1f} MFLOP per training image", flush=True)
    for cell in res["cells"]:
        if "images_per_s" in cell and peak:
            cell["fraction_of_peak"] = cell["images_per_s"] * res["flops_per_image"] / peak
    save()
EOF
if [[ $WRN != 0 ]]; then
  step wrn $B5 $PY $R/wrn.py $W_SIZES $W_BATCH $W_TINY bfloat16 $R/wrn
  grep -E "^(K=|projected|[0-9.]+ MFLOP)" $R/wrn.log
fi

# 6 (MP=1, or by itself on a machine with 2+ GPUs): step 3's LiRA run across processes, one
# per GPU (python -m jaxpet.launch --one_gpu_each), the 64 models split over them: its
# results.json figures are to equal step 3's, its time to be step 3's over the GPU count.
# Box 200 s. SMOKE=1 runs 2 CPU processes instead (2 forced devices each).
GPUS=$(nvidia-smi -L 2>/dev/null | grep -c "^GPU" || true)
MP=${MP:-$([[ ${GPUS:-0} -ge 2 ]] && echo 1 || echo 0)}
if [[ $MP == 1 ]]; then
  if [[ ${SMOKE:-0} == 1 ]]; then NPROC=2; PLACE=(--local_devices=2); else
    NPROC=${GPUS:-2}; PLACE=(--one_gpu_each); fi
  step lira_mp 200 $PY -m jaxpet.launch --num_processes=$NPROC "${PLACE[@]}" -- \
    experiments/lira.py --workdir=$R/lira_mp --dataset=cifar10 --num_models=$L_MODELS \
    --epochs=$L_EPOCHS --precision=bfloat16 --num_targets=$L_TARGETS \
    --checkpoint_every=$L_EPOCHS "${L_EXTRA[@]}" --alsologtostderr
  grep -E "resumed|error" $R/lira_mp.log | tail -3
fi

# The goals, read off the results (missing figures say so).
$PY - $R > $R/goals.md 2>&1 <<'EOF'
import json, pathlib, sys

r = pathlib.Path(sys.argv[1])


def load(name):
    try:
        return json.loads((r / name / "results.json").read_text())
    except (OSError, ValueError):
        return None


def cell(results, workload, strategy, k, precision):
    for c in (results or {}).get("cells", []):
        if (c["workload"], c["strategy"], c["num_models"], c["precision"]) == (
                workload, strategy, k, precision) and "error" not in c:
            return c


def mem(results, workload, precision):
    for m in (results or {}).get("memory", []):
        if (m["workload"], m["precision"]) == (workload, precision) and "error" not in m:
            return m


print("# GPU session: goals\n")
target = load("benchmark_target")
for c in (target or {}).get("cells", []):
    if "error" in c:
        print(f"- {c['workload']} {c['strategy']} K={c['num_models']} {c['precision']}: "
              f"{c['error']}")
ks = sorted({c["num_models"] for c in (target or {}).get("cells", []) if "error" not in c
             and c["precision"] == "bfloat16"})
k = max(ks) if ks else None
c = cell(target, "cifar10_target", "vmap", k, "bfloat16") if k else None
if c:
    seconds = 256 * 50 * 25_000 / c["images_per_s"]
    frac = c["fraction_of_peak"]
    frac_text = f"{100 * frac:.1f}% of bf16 peak" if frac else "fraction of peak unknown"
    ok = seconds < 600 and frac is not None and frac >= 0.40
    print(f"- G1: cifar10_target vmap K={k} bf16: {c['images_per_s']:.0f} images/s, "
          f"{frac_text}; 256 x 50 x 25,000 projected {seconds:.0f} s "
          f"({'met' if ok else 'NOT met'}: < 600 s and >= 40%).")
else:
    print("- G1: no cifar10_target bf16 vmap cell measured.")
for precision in ("bfloat16", "float32"):
    m = mem(target, "cifar10_target", precision)
    if m:
        print(f"- memory, cifar10_target {precision}, batch {m['batch_size']}: "
              f"{m['per_model_bytes'] / 2**20:.0f} MiB per model "
              f"(activations {m['activation_bytes'] / 2**20:.0f} MiB), at most {m['max_models']} "
              f"models in {m['device_bytes'] / 2**30:.1f} GiB ({m['device_memory_source']}).")
shadow = load("benchmark_shadow")
ks = sorted({c["num_models"] for c in (shadow or {}).get("cells", [])})
k = 64 if 64 in ks else (max(ks) if ks else None)
torch = cell(shadow, "cifar10_shadow", "torch", k, "float32") if k else None
for precision in ("float32", "bfloat16"):
    v = cell(shadow, "cifar10_shadow", "vmap", k, precision) if k else None
    loop = cell(shadow, "cifar10_shadow", "loop", k, precision) if k else None
    if not v:
        print(f"- G2 {precision}: no vmap cell at K={k}.")
        continue
    parts = []
    if torch:
        ratio = v["images_per_s"] / torch["images_per_s"]
        parts.append(f"{ratio:.1f}x PyTorch fp32 ({'met' if ratio >= 20 else 'NOT met'}: >= 20x)")
    if loop:
        ratio = v["images_per_s"] / loop["images_per_s"]
        parts.append(f"{ratio:.1f}x the loop ({'met' if ratio >= 10 else 'NOT met'}: >= 10x)")
    print(f"- G2: cifar10_shadow vmap K={k} {precision}: {v['images_per_s']:.0f} images/s = "
          + ("; ".join(parts) or "no reference measured") + ".")
lira = load("lira64")
if lira:
    best = max(lira["attacks"].items(), key=lambda kv: kv[1]["auc"]["mean"])
    print(f"- LiRA: {len(lira['models']['per_model']['train_acc'])} models trained in "
          f"{lira['seconds']['training']:.0f} s (logits {lira['seconds']['predict']:.0f} s); "
          f"best attack {best[0]} AUC {best[1]['auc']['mean']:.3f}.")
else:
    print("- LiRA: no results.")
try:
    wrn = json.loads((r / "wrn" / "results.json").read_text())
except (OSError, ValueError):
    wrn = None
for c in (wrn or {}).get("cells", []):
    if "error" in c:
        print(f"- WRN: {wrn['model']} K={c['num_models']}: {c['error']}")
        continue
    frac = c.get("fraction_of_peak")
    print(f"- WRN: {wrn['model']}, LiRA recipe, vmap K={c['num_models']} {wrn['precision']}: "
          f"{c['images_per_s']:.0f} images/s" + (f", {100 * frac:.1f}% of peak" if frac else "")
          + ".")
if (wrn or {}).get("projected_s"):
    print("- WRN: projected LiRA runs (100 epochs x 25,000 members): " + ", ".join(
        f"{k} models {s / 60:.0f} min" for k, s in wrn["projected_s"].items()) + ".")
tables = r / "seed_tables" / "seed_tables.md"
print("\n" + (tables.read_text() if tables.exists() else "Seed tables: no results.\n"))
print("Steps (name, exit status, seconds):\n")
print((r / "steps.txt").read_text() if (r / "steps.txt").exists() else "")
EOF
cat $R/goals.md
