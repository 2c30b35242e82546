"""Static memory planning of the tensor arena (issue 5, item 1).

:mod:`edgecomp.memory.buffers` turns an IR model into :class:`Buffer` objects (int8 sizes and
lifetimes in execution steps); :mod:`edgecomp.memory.planner` gives them offsets: the lower bound,
TensorFlow Lite Micro's greedy planner as the baseline, and :func:`best_plan`.

Typical use::

    buffers = arena_buffers(model)             # int8 view, 16-byte aligned sizes
    plan = best_plan(buffers)
    plan.verify()
    plan.arena_size, plan.lower_bound, plan.gap_bytes, plan.tensor_offsets()
"""

from edgecomp.memory.buffers import IN_PLACE_OPS, Buffer, arena_buffers, arena_steps
from edgecomp.memory.planner import (
    DEFAULT_SEARCH_BUDGET,
    ArenaOverlapError,
    Plan,
    best_plan,
    greedy_by_size,
    live_bytes,
    lower_bound,
)

__all__ = [
    "DEFAULT_SEARCH_BUDGET",
    "IN_PLACE_OPS",
    "ArenaOverlapError",
    "Buffer",
    "Plan",
    "arena_buffers",
    "arena_steps",
    "best_plan",
    "greedy_by_size",
    "live_bytes",
    "lower_bound",
]
