"""Where a training step's time goes: one compiled epoch traced with ``jax.profiler``.

The trace's op events are matched to the compiled HLO's instructions, whose
metadata names the model layer and the autodiff phase (``jvp`` forward,
``transpose`` backward), and summed into the categories a reader acts on:
matmuls (GEMM), building patch matrices (im2col), BatchNorm, pooling,
and the rest. Needs no TensorFlow: ``jax.profiler.ProfileData``
reads the trace.
"""

from __future__ import annotations

import collections
import glob
import re
import tempfile
from typing import Any

import jax

# First match wins; tested against the op_name metadata of a seed CNN's epoch. "im2col" is
# building patch matrices and their gradients, or XLA's own convolution (conv_impl="conv"),
# whose patch building is internal; "other" includes the optimiser, the loss and the gather.
CATEGORIES = (
    ("matmul", re.compile(r"(Conv_\d+|Dense_\d+)/(dot_general|transpose)|/dot_general")),
    ("im2col", re.compile(r"Conv_\d+/(concatenate|slice|pad|jit\(_pad\)|conv_general_dilated)"
                          r"|conv_general_dilated")),
    ("batchnorm", re.compile(r"(BatchNorm|GroupNorm)_\d+")),
    ("pooling", re.compile(r"reduce_max|select_n|_where|max_pool|select_and_scatter"
                           r"|reduce_window")),
)
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*)$", re.M)
_OP_NAME = re.compile(r'op_name="([^"]+)"')
_OPERAND = re.compile(r"%([\w.\-]+)")
# Trace events that enclose other ops (the loop, the executable) or are host frames.
_ENCLOSING = re.compile(r"Execute|Await|^\$|^while|PjitFunction|^ThunkExecutor")


def categorize(op_name: str) -> str:
    """The category of one HLO instruction from its op_name metadata ("other" if none fits)."""
    phase = op_name.split("closed_call/")[-1]
    for name, pattern in CATEGORIES:
        if pattern.search(phase):
            return name
    return "other"


def op_times(run, steps: int) -> dict[str, float]:
    """Milliseconds per step of each compiled op while ``run()`` executes (after a warm-up)."""
    jax.block_until_ready(run())
    folder = tempfile.mkdtemp(prefix="jaxpet-profile-")
    jax.profiler.start_trace(folder)
    try:
        jax.block_until_ready(run())
    finally:
        jax.profiler.stop_trace()
    files = glob.glob(f"{folder}/**/*.xplane.pb", recursive=True)
    if not files:
        raise RuntimeError(f"jax.profiler wrote no trace under {folder}.")
    totals: collections.Counter = collections.Counter()
    for plane in jax.profiler.ProfileData.from_file(files[0]).planes:
        for line in plane.lines:
            for event in line.events:
                # Skip the executor's own spans and Python frames: they contain the ops.
                if _ENCLOSING.search(event.name):
                    continue
                totals[event.name] += event.duration_ns
    return {name: ns / 1e6 / steps for name, ns in totals.items()}


def op_names(compiled_text: str) -> dict[str, str]:
    """Each instruction's op_name metadata; one without (XLA's own helpers, e.g. the index
    arrays of a select-and-scatter) takes the op_name of the nearest consumer that has one."""
    names, users = {}, collections.defaultdict(list)
    for m in _INSTRUCTION.finditer(compiled_text):
        name, rest = m.group(1), m.group(2)
        meta = _OP_NAME.search(rest)
        if meta:
            names[name] = meta.group(1)
        for operand in set(_OPERAND.findall(rest.split("metadata=")[0])):
            users[operand].append(name)
    resolved = dict(names)
    for name in list(users):
        if name in resolved:
            continue
        queue, seen = list(users[name]), set()
        while queue:
            user = queue.pop(0)
            if user in names:
                resolved[name] = names[user]
                break
            if user not in seen:
                seen.add(user)
                queue.extend(users.get(user, ()))
    return resolved


def breakdown(compiled_text: str, times: dict[str, float], top: int = 8) -> dict[str, Any]:
    """Sums per-op ``times`` into :data:`CATEGORIES` using ``compiled_text``'s metadata."""
    names = op_names(compiled_text)
    by_category: dict[str, float] = {}
    ops: list[dict[str, Any]] = []
    for op, ms in times.items():
        op_name = names.get(op)
        category = categorize(op_name) if op_name else "other"
        by_category[category] = by_category.get(category, 0) + ms
        ops.append({"op": op, "ms": ms, "category": category,
                    "layer": (op_name or "").split("closed_call/")[-1]})
    ops.sort(key=lambda r: -r["ms"])
    largest_first = sorted(by_category.items(), key=lambda kv: kv[1], reverse=True)
    return {"total_ms": sum(times.values()), "categories": dict(largest_first),
            "top_ops": ops[:top]}
