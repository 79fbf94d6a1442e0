"""The benchmark's summary: the cells' table with vmap's speed-ups, step profiles, memory.

Every ratio is of images/s measured in the same run (vmap over the loop, and over
PyTorch's float32 reference); the tables are what benchmark.md holds.
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxpet.benchmark import profile as profile_lib, throughput


def markdown(rows: Sequence[dict], inversion_row: dict | None = None,
             memory_rows: Sequence[dict] = (), profiles: Sequence[dict] = (),
             gemm: float | None = None) -> str:
    """A table of the measured cells; vmap's speed-up over the loop and over PyTorch, each a
    ratio of images/s measured in the same run; then step profiles and memory estimates."""
    cell_key = lambda r: (r["workload"], r["num_models"], r["conv_impl"], r["precision"],
                          r.get("pool_impl"), r.get("batchnorm_impl"))
    failed = [r for r in rows if "error" in r]
    rows = [r for r in rows if "error" not in r]
    loop = {cell_key(r): r["images_per_s"] for r in rows if r["strategy"] == "loop"}
    torch = {(r["workload"], r["num_models"]): r["images_per_s"]
             for r in rows if r["strategy"] == "torch"}
    lines = []
    if gemm:
        lines += [f"Peak of the CPU cells: this CPU's measured float32 GEMM rate, "
                  f"{gemm / 1e9:.0f} GFLOP/s (the best jitted matmul of "
                  f"{', '.join('x'.join(map(str, s)) for s in throughput.GEMM_SHAPES)}); "
                  "FLOPs from XLA's cost "
                  "analysis of the model's step (PyTorch rows: the same model's FLOPs per "
                  "image).", ""]
    lines += ["| workload | strategy | K | conv | pool | BatchNorm | precision | images/s | "
              "model-epochs/s | compile s | TFLOP/s | % of peak | peak mem (GiB) | vmap / loop | "
              "/ torch |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        key = cell_key(r)
        vmap = r["strategy"] == "vmap"
        over_loop = f"{r['images_per_s'] / loop[key]:.2f}x" if vmap and key in loop else ""
        torch_key = (r["workload"], r["num_models"])
        over_torch = (f"{r['images_per_s'] / torch[torch_key]:.2f}x"  # float32 against float32
                      if r["strategy"] != "torch" and torch_key in torch
                      and r["precision"] == "float32" else "")
        tflops = f"{r['flop_per_s'] / 1e12:.3f}" if r.get("flop_per_s") else "n/a"
        frac = f"{100 * r['fraction_of_peak']:.1f}" if r.get("fraction_of_peak") else "unknown"
        mem = f"{r['peak_memory_bytes'] / 2**30:.2f}" if r["peak_memory_bytes"] else "n/a"
        lines.append(f"| {r['workload']} | {r['strategy']} | {r['num_models']} | "
                     f"{r['conv_impl_resolved']} | "
                     f"{r.get('pool_impl_resolved', r.get('pool_impl', '-'))} | "
                     f"{r.get('batchnorm_impl_resolved', r.get('batchnorm_impl', '-'))} | "
                     f"{r['precision']} | {r['images_per_s']:.0f} | "
                     f"{r['model_epochs_per_s']:.3f} | {r['compile_seconds']:.1f} | {tflops} | "
                     f"{frac} | {mem} | {over_loop} | {over_torch} |")
    if failed:
        lines += ["", "Cells that could not run:", ""]
        lines += [f"- {r['workload']} {r['strategy']} K={r['num_models']} {r['precision']} "
                  f"({r['conv_impl']}, {r['pool_impl']} pool): {r['error']}" for r in failed]
    lines += profile_markdown(profiles)
    lines += memory_markdown(memory_rows)
    if inversion_row:
        i = inversion_row
        lines += ["", f"mi_face, {i['classes']} classes x {i['iterations']} iterations "
                  f"({i['backend']}): vmapped {i['vmap_seconds']:.2f} s, loop over classes "
                  f"{i['loop_seconds']:.2f} s ({i['ratio']:.1f}x)."]
    return "\n".join(lines) + "\n"


def profile_markdown(profiles: Sequence[dict]) -> list[str]:
    """Step profiles as table lines: ms per optimiser step by category, then the top ops."""
    if not profiles:
        return []
    categories = [c for c, _ in profile_lib.CATEGORIES] + ["other"]
    lines = ["", "Where one training step's time goes (K=1, jax.profiler trace of one epoch, "
             "ms per optimiser step summed over ops; ops on both cores overlap, so the total "
             "can exceed the wall time):", "",
             "| workload | precision | conv | pool | BatchNorm | total | "
             + " | ".join(categories) + " | costliest op |",
             "|---|---|---|---|---|---|" + "---|" * len(categories) + "---|"]
    for p in profiles:
        top = p["top_ops"][0] if p["top_ops"] else {"layer": "-", "ms": 0.0}
        lines.append(f"| {p['workload']} | {p['precision']} | {p['conv_impl']} | "
                     f"{p['pool_impl']} | {p['batchnorm_impl']} | {p['total_ms']:.1f} | "
                     + " | ".join(f"{p['categories'].get(c, 0.0):.1f}" for c in categories)
                     + f" | {top['layer']} ({top['ms']:.1f}) |")
    return lines


def memory_markdown(memory_rows: Sequence[dict]) -> list[str]:
    """The memory estimates as table lines (none without estimates)."""
    if not memory_rows:
        return []
    mib = lambda b: f"{b / 2**20:.1f}"
    lines = ["", "Device memory per model (vmapped epoch, from XLA's compiled memory analysis: "
             "bytes(K) = fixed + per model x K, fitted through two compiled sizes; max K: the "
             "largest K whose program fits the device memory; fixed includes the resident "
             "image pool):", "",
             "| workload | precision | conv | pool | batch | per model (MiB) | parameters (MiB) | "
             "optimiser state (MiB) | BatchNorm stats (KiB) | activations + temporaries (MiB) | "
             "fixed (MiB) | fit K | device memory (GiB) | max K |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in memory_rows:
        if "error" in r:
            lines.append(f"| {r['workload']} | {r['precision']} | {r['conv_impl']} | "
                         f"{r['pool_impl']} | no estimate: {r['error']} |")
            continue
        lines.append(
            f"| {r['workload']} | {r['precision']} | {r['conv_impl_resolved']} | "
            f"{r['pool_impl']} | {r['batch_size']} | {mib(r['per_model_bytes'])} | "
            f"{mib(r['parameter_bytes'])} | {mib(r['optimizer_state_bytes'])} | "
            f"{r['batch_stats_bytes'] / 2**10:.1f} | {mib(r['activation_bytes'])} | "
            f"{mib(r['fixed_bytes'])} | {','.join(map(str, r['fit_models']))} | "
            f"{r['device_bytes'] / 2**30:.1f} | {r['max_models']} |")
    return lines
