"""Static tensor-arena planning: offsets for buffers with known sizes and lifetimes.

A *buffer* (:class:`edgecomp.memory.buffers.Buffer`) is a size in bytes and an inclusive interval
of execution steps. A *plan* gives every buffer an offset in one arena so that two buffers alive at
a common step never share a byte; its *arena size* is the largest ``offset + size``. This is the
dynamic storage allocation problem (Garey & Johnson, *Computers and Intractability*, problem SR2),
NP-hard in general; the planners here are:

- :func:`lower_bound`: the largest total size of buffers alive at one step. No plan is smaller.
- :func:`greedy_by_size`: TensorFlow Lite Micro's ``GreedyMemoryPlanner``
  (``tensorflow/lite/micro/memory_planner/greedy_memory_planner.cc``), the baseline: buffers by
  size, largest first, each at the lowest offset that does not collide with an already placed
  buffer alive at a common step (first fit).
- :func:`best_plan`: several constructive heuristics (first fit and best fit over several orders,
  a two-sided placement at a target height) and then a depth-first branch and bound over
  *canonical* first-fit sequences with a node budget; it returns the smallest plan found, never
  larger than :func:`greedy_by_size`, and stops early when a plan reaches the lower bound.

Everything is deterministic: ties are broken by buffer index, and the search budget counts search
nodes, not seconds, so the same buffers always give the same plan.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from edgecomp.errors import VerificationError
from edgecomp.memory.buffers import Buffer, arena_buffers

__all__ = [
    "DEFAULT_SEARCH_BUDGET",
    "ArenaOverlapError",
    "Buffer",
    "Plan",
    "arena_buffers",
    "best_plan",
    "greedy_by_size",
    "live_bytes",
    "lower_bound",
]

DEFAULT_SEARCH_BUDGET = 20_000
"""Search nodes :func:`best_plan` may expand before it returns the best plan found so far (each
node places one buffer; spending it all takes about 1 s for 30 buffers and 2-3 s for 120 on a
2020s x86 core). The MLPerf Tiny models meet the lower bound before the search starts."""


class ArenaOverlapError(VerificationError):
    """A memory plan puts two buffers alive at a common step on common bytes, or misaligns one.

    A planner bug, found by :meth:`Plan.verify`."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """Offsets of buffers in one tensor arena.

    Attributes:
        buffers: the planned buffers, in the order given to the planner.
        offsets: ``offsets[i]`` is the byte offset of ``buffers[i]`` from the arena start.
        arena_size: bytes: the largest ``offset + size`` (0 without buffers).
        lower_bound: bytes: :func:`lower_bound` of the buffers.
        alignment: bytes; every offset is a multiple of it.
        strategy: the planner (and order) that produced the offsets, e.g. ``tflm-greedy-by-size``.
    """

    buffers: tuple[Buffer, ...]
    offsets: tuple[int, ...]
    arena_size: int
    lower_bound: int
    alignment: int
    strategy: str

    @property
    def gap_bytes(self) -> int:
        """Bytes above the lower bound (``arena_size - lower_bound``, >= 0)."""
        return self.arena_size - self.lower_bound

    @property
    def gap_percent(self) -> float:
        """The gap in percent of the lower bound (0.0 when the bound is 0)."""
        return 100.0 * self.gap_bytes / self.lower_bound if self.lower_bound else 0.0

    def offset(self, name: str) -> int:
        """Offset (bytes) of the buffer named ``name``, or of the buffer holding tensor ``name``.

        Raises:
            KeyError: no buffer has that name or holds that tensor.
        """
        for buffer, offset in zip(self.buffers, self.offsets):
            if buffer.name == name or name in buffer.tensors:
                return offset
        raise KeyError(f"no buffer named {name!r} and none holding a tensor of that name")

    def tensor_offsets(self) -> dict[str, int]:
        """Every tensor name held by a buffer (and every buffer name) -> its offset in bytes."""
        result: dict[str, int] = {}
        for buffer, offset in zip(self.buffers, self.offsets):
            result[buffer.name] = offset
            for tensor in buffer.tensors:
                result[tensor] = offset
        return result

    def verify(self) -> None:
        """Check the plan: aligned offsets, inside the arena, no two buffers alive at a common step
        sharing a byte.

        Raises:
            ArenaOverlapError: naming the first offending buffer (or pair), its offsets and steps.
        """
        if len(self.offsets) != len(self.buffers):
            raise ArenaOverlapError(f"plan has {len(self.offsets)} offsets for {len(self.buffers)} buffers")
        top = 0
        for buffer, offset in zip(self.buffers, self.offsets):
            if offset < 0 or offset % self.alignment:
                raise ArenaOverlapError(
                    f"buffer {buffer.name!r} at offset {offset}: not a non-negative multiple of the alignment {self.alignment}"
                )
            top = max(top, offset + buffer.size)
        if top != self.arena_size:
            raise ArenaOverlapError(f"arena size {self.arena_size} B but the buffers end at {top} B")
        # sweep the steps: buffers alive together, sorted by offset, must not overlap
        events = sorted(range(len(self.buffers)), key=lambda i: (self.buffers[i].first_step, i))
        alive: list[int] = []
        for index in events:
            buffer = self.buffers[index]
            alive = [j for j in alive if self.buffers[j].last_step >= buffer.first_step]
            start, end = self.offsets[index], self.offsets[index] + buffer.size
            for other in alive:
                other_start = self.offsets[other]
                other_end = other_start + self.buffers[other].size
                if start < other_end and other_start < end and buffer.size and self.buffers[other].size:
                    raise ArenaOverlapError(
                        f"buffers {self.buffers[other].name!r} (bytes {other_start}..{other_end}, steps "
                        f"{self.buffers[other].first_step}..{self.buffers[other].last_step}) and {buffer.name!r} "
                        f"(bytes {start}..{end}, steps {buffer.first_step}..{buffer.last_step}) overlap"
                    )
            alive.append(index)

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data: sizes in bytes, buffers with offset, size and steps."""
        return {
            "arena_bytes": self.arena_size,
            "lower_bound_bytes": self.lower_bound,
            "gap_bytes": self.gap_bytes,
            "gap_percent": round(self.gap_percent, 3),
            "alignment": self.alignment,
            "strategy": self.strategy,
            "buffers": [
                {
                    "name": buffer.name,
                    "offset": offset,
                    "size": buffer.size,
                    "first_step": buffer.first_step,
                    "last_step": buffer.last_step,
                    "tensors": list(buffer.tensors),
                }
                for buffer, offset in zip(self.buffers, self.offsets)
            ],
        }


# --------------------------------------------------------------------------------------------
# bound


def live_bytes(buffers: Sequence[Buffer]) -> list[int]:
    """Return, per step ``0..max(last_step)``, the total size (bytes) of the buffers alive then."""
    if not buffers:
        return []
    steps = max(buffer.last_step for buffer in buffers) + 1
    delta = [0] * (steps + 1)
    for buffer in buffers:
        delta[buffer.first_step] += buffer.size
        delta[buffer.last_step + 1] -= buffer.size
    live, total = [], 0
    for step in range(steps):
        total += delta[step]
        live.append(total)
    return live


def lower_bound(buffers: Sequence[Buffer]) -> int:
    """Return the arena lower bound: the largest total size (bytes) of buffers alive at one step.

    Buffers alive at a common step cannot share bytes, so every plan needs at least this much
    (the "lower bound" of DESIGN.md; :func:`edgecomp.ir.analysis.peak_live_bytes` on the model's own
    tensors, before alignment and the int8 view). 0 without buffers.
    """
    return max(live_bytes(buffers), default=0)


# --------------------------------------------------------------------------------------------
# the problem in arrays


class _Problem:
    """Buffers as arrays (sizes, first/last steps) with, per buffer, the buffers alive with it."""

    def __init__(self, buffers: Sequence[Buffer], alignment: int) -> None:
        if alignment < 1:
            raise ValueError(f"alignment must be >= 1, got {alignment}")
        unaligned = [buffer.name for buffer in buffers if buffer.size % alignment]
        if unaligned:
            raise ValueError(
                f"buffer sizes must be multiples of the alignment {alignment} (arena_buffers rounds them): "
                + ", ".join(repr(name) for name in unaligned[:5])
            )
        self.buffers = tuple(buffers)
        self.alignment = alignment
        self.size = [buffer.size for buffer in buffers]
        self.first = [buffer.first_step for buffer in buffers]
        self.last = [buffer.last_step for buffer in buffers]
        self.count = len(buffers)
        self.steps = max(self.last, default=-1) + 1
        self.overlap: list[list[int]] = [[] for _ in buffers]
        by_start = sorted(range(self.count), key=lambda i: (self.first[i], i))
        alive: list[int] = []
        for i in by_start:
            alive = [j for j in alive if self.last[j] >= self.first[i]]
            for j in alive:
                if self.size[i] and self.size[j]:  # empty buffers collide with nothing
                    self.overlap[i].append(j)
                    self.overlap[j].append(i)
            alive.append(i)
        for neighbours in self.overlap:
            neighbours.sort()
        self.lower_bound = lower_bound(buffers)

    def align_up(self, offset: int) -> int:
        return -(-offset // self.alignment) * self.alignment

    def first_fit(self, i: int, offsets: list[int]) -> int:
        """Lowest aligned offset where buffer ``i`` collides with no placed buffer alive with it."""
        sizes, alignment, size = self.size, self.alignment, self.size[i]
        intervals = sorted([(offsets[j], offsets[j] + sizes[j]) for j in self.overlap[i] if offsets[j] >= 0])
        candidate = 0
        for start, end in intervals:
            if start - candidate >= size:
                break
            if end > candidate:
                candidate = end if end % alignment == 0 else end + alignment - end % alignment
        return candidate

    def best_fit(self, i: int, offsets: list[int]) -> int:
        """Offset of the smallest gap between placed buffers alive with ``i`` that holds it (ties:
        the lowest); above all of them when no gap does."""
        intervals = sorted((offsets[j], offsets[j] + self.size[j]) for j in self.overlap[i] if offsets[j] >= 0)
        candidate, best, best_gap = 0, None, None
        for start, end in intervals:
            gap = start - candidate
            if gap >= self.size[i] and (best_gap is None or gap < best_gap):
                best, best_gap = candidate, gap
            candidate = max(candidate, self.align_up(end))
        return candidate if best is None else best

    def top_fit(self, i: int, offsets: list[int], height: int) -> int | None:
        """Highest aligned offset with ``offset + size <= height`` where ``i`` collides with no
        placed buffer alive with it; None when there is none."""
        intervals = [(offsets[j], offsets[j] + self.size[j]) for j in self.overlap[i] if offsets[j] >= 0]
        size, step = self.size[i], self.alignment
        candidates = {(height - size) // step * step}
        candidates.update((start - size) // step * step for start, _ in intervals)
        for candidate in sorted(candidates, reverse=True):
            if candidate < 0:
                break
            if candidate + size <= height and all(candidate >= end or candidate + size <= start for start, end in intervals):
                return candidate
        return None

    def height(self, offsets: Sequence[int]) -> int:
        return max((offset + size for offset, size in zip(offsets, self.size)), default=0)

    def plan(self, offsets: Sequence[int], strategy: str) -> Plan:
        return Plan(self.buffers, tuple(offsets), self.height(offsets), self.lower_bound, self.alignment, strategy)


def _place(problem: _Problem, order: Sequence[int], fit: Callable[[int, list[int]], int]) -> list[int]:
    offsets = [-1] * problem.count
    for i in order:
        offsets[i] = fit(i, offsets)
    return offsets


# --------------------------------------------------------------------------------------------
# TFLite Micro's greedy planner


def greedy_by_size(buffers: Sequence[Buffer], *, alignment: int = 16) -> Plan:
    """Plan like TensorFlow Lite Micro's ``GreedyMemoryPlanner`` (the baseline).

    From ``greedy_memory_planner.cc`` (``CalculateOffsetsIfNeeded``), without offline-planned
    offsets: the buffers are written into the sort arrays from the tail (buffer 0 last), then
    bubble-sorted by size descending with a stable swap (``values[i - 1] < values[i]``), so buffers
    of equal size come **later-added first**. The first goes to offset 0; each next one walks the
    already placed buffers that are alive at a common step (inclusive steps,
    ``DoesEntryOverlapInTime``) in offset order and takes the first gap between them that holds
    it, else the end of the last one: the lowest offset that collides with nothing (first fit).
    TFLM adds its tensors in tensor-index order with sizes rounded up to 16 bytes; pass buffers
    in the same order to reproduce its offsets.

    Args:
        buffers: sizes in bytes, multiples of ``alignment``; inclusive step intervals; their order
            is TFLM's "order added".
        alignment: bytes (TFLM: 16); every offset is a multiple of it.

    Returns:
        :class:`Plan` with strategy ``tflm-greedy-by-size``.

    Raises:
        ValueError: a size is not a multiple of ``alignment``, or ``alignment < 1``.
    """
    problem = _Problem(buffers, alignment)
    order = sorted(range(problem.count), key=lambda i: (-problem.size[i], -i))
    return problem.plan(_place(problem, order, problem.first_fit), "tflm-greedy-by-size")


# --------------------------------------------------------------------------------------------
# better plans


_ORDERS: dict[str, Callable[[_Problem, int], tuple]] = {
    "size": lambda p, i: (-p.size[i], p.first[i], i),
    "lifetime": lambda p, i: (-(p.last[i] - p.first[i]), -p.size[i], i),
    "start": lambda p, i: (p.first[i], -p.size[i], i),
    "area": lambda p, i: (-p.size[i] * (p.last[i] - p.first[i] + 1), i),
    "conflict": lambda p, i: (-sum(p.size[j] for j in p.overlap[i]) - p.size[i], -p.size[i], i),
}
"""Orders for the constructive heuristics: sort keys (ascending) of buffer ``i``."""


def _two_sided(problem: _Problem, height: int) -> list[int] | None:
    """Place the buffers in start order, each against the bottom (first fit) or the top of an arena
    of ``height`` bytes: the side opposite to the latest-starting placed buffer alive with it.

    When at most two buffers are alive at every step (a chain: each step reads one tensor that
    dies there and writes the next), the buffers alive together form a forest of intervals and
    this alternates sides along it: at ``height = lower_bound`` a bottom buffer sits at 0 and its
    one placed neighbour at ``height - size``, which fit because their sizes sum to at most the
    bound. So the plan meets the lower bound on chains. Returns None when a buffer fits on neither side.
    """
    order = sorted(range(problem.count), key=lambda i: (problem.first[i], -problem.size[i], i))
    offsets = [-1] * problem.count
    side = [0] * problem.count
    for i in order:
        placed = [j for j in problem.overlap[i] if offsets[j] >= 0]
        prefer = 1 - side[max(placed, key=lambda j: (problem.first[j], problem.size[j], -j))] if placed else 0
        for choice in (prefer, 1 - prefer):
            if choice == 0:
                offset = problem.first_fit(i, offsets)
                if offset + problem.size[i] > height:
                    continue
            else:
                offset = problem.top_fit(i, offsets, height)
                if offset is None:
                    continue
            offsets[i], side[i] = offset, choice
            break
        else:
            return None
    return offsets


class _Search:
    """Depth-first branch and bound over canonical first-fit sequences.

    Any plan can be pushed down (each buffer, lowest first, to the lowest offset where it collides
    with nothing below it) without growing; placing the buffers of such a plan in offset order by
    first fit gives it back, with offsets that never decrease along the sequence. So searching the
    sequences whose first-fit offsets never decrease finds an optimal plan; the search stops at
    ``budget`` nodes. A node is pruned when ``o + (bytes placed above o at step t) + (bytes still
    unplaced at step t)`` reaches the best arena found for some step ``t``, ``o`` being the last
    offset placed (every later buffer sits at or above it). Buffers of equal size and lifetime are
    interchangeable: only the first is branched on.
    """

    def __init__(self, problem: _Problem, incumbent: list[int], budget: int) -> None:
        self.problem = problem
        self.best = list(incumbent)
        self.best_height = problem.height(incumbent)
        self.budget = budget
        self.nodes = 0
        self.offsets = [-1] * problem.count
        self.alive_at = [[i for i in range(problem.count) if problem.first[i] <= t <= problem.last[i]] for t in range(problem.steps)]
        self.improved = False

    def run(self) -> list[int]:
        if self.best_height > self.problem.lower_bound and self.problem.count:
            self.fits = [0] * self.problem.count  # first-fit offset of every unplaced buffer, kept current
            self._visit(0, 0, self.problem.count)
        return self.best

    def _bound(self, floor: int, height: int) -> int:
        sizes, offsets = self.problem.size, self.offsets
        bound = height
        for alive in self.alive_at:
            need = floor
            for i in alive:
                offset = offsets[i]
                if offset < 0:
                    need += sizes[i]
                else:
                    end = offset + sizes[i]
                    if end > floor:
                        need += end - (offset if offset > floor else floor)
            if need > bound:
                bound = need
        return bound

    def _visit(self, floor: int, height: int, remaining: int) -> bool:
        """Returns True to stop the whole search (budget spent or lower bound reached)."""
        problem, offsets, fits = self.problem, self.offsets, self.fits
        if remaining == 0:
            if height < self.best_height:
                self.best, self.best_height, self.improved = list(offsets), height, True
            return self.best_height <= problem.lower_bound
        self.nodes += 1
        if self.nodes > self.budget:
            return True
        if self._bound(floor, height) >= self.best_height:
            return False
        candidates = []
        seen: set[tuple[int, int, int, int]] = set()
        for i in range(problem.count):
            if offsets[i] >= 0:
                continue
            offset = fits[i]
            if offset < floor or offset + problem.size[i] >= self.best_height:
                continue
            key = (offset, problem.size[i], problem.first[i], problem.last[i])
            if key in seen:
                continue
            seen.add(key)
            candidates.append((offset, -problem.size[i], -(problem.last[i] - problem.first[i]), i))
        candidates.sort()
        for offset, _, _, i in candidates:
            offsets[i] = offset
            changed = [(j, fits[j]) for j in problem.overlap[i] if offsets[j] < 0]
            for j, _ in changed:
                fits[j] = problem.first_fit(j, offsets)
            stop = self._visit(offset, max(height, offset + problem.size[i]), remaining - 1)
            for j, old in changed:
                fits[j] = old
            offsets[i] = -1
            if stop:
                return True
        return False


def best_plan(buffers: Sequence[Buffer], *, alignment: int = 16, search_budget: int = DEFAULT_SEARCH_BUDGET) -> Plan:
    """Return the smallest plan found for ``buffers``: never larger than :func:`greedy_by_size`,
    equal to :func:`lower_bound` when at most two buffers are alive at every step (chains).

    Candidates, smallest arena kept (ties: the first in this list):

    1. :func:`greedy_by_size` (TFLite Micro);
    2. first fit and best fit (smallest gap that holds the buffer, ties lowest offset) over the
       orders of :data:`_ORDERS`: size, lifetime length, area (size x steps) and conflict (bytes
       alive with the buffer) descending, start step ascending, ties by buffer index;
    3. the two-sided placement (:func:`_two_sided`) at the lower bound, then at heights between
       the bound and the best arena so far (bisection); exact on chains;
    4. unless a candidate already meets the lower bound, a branch and bound over canonical
       first-fit sequences (:class:`_Search`) started from the best candidate, for at most
       ``search_budget`` nodes. With an unlimited budget it finds an optimal plan.

    Args:
        buffers: sizes in bytes (multiples of ``alignment``), inclusive step intervals.
        alignment: bytes; every offset is a multiple of it (default 16).
        search_budget: search nodes (buffer placements) for step 4; 0 skips the search. The
            result depends on it, never on time.

    Returns:
        :class:`Plan`; its ``strategy`` names the candidate that won (``search`` for step 4).

    Raises:
        ValueError: a size is not a multiple of ``alignment``, or ``alignment < 1``.
    """
    problem = _Problem(buffers, alignment)
    baseline = greedy_by_size(buffers, alignment=alignment)
    best_offsets, best_height, best_name = list(baseline.offsets), baseline.arena_size, baseline.strategy

    def consider(offsets: list[int] | None, name: str) -> None:
        nonlocal best_offsets, best_height, best_name
        if offsets is not None and problem.height(offsets) < best_height:
            best_offsets, best_height, best_name = offsets, problem.height(offsets), name

    for order_name, key in _ORDERS.items():
        order = sorted(range(problem.count), key=lambda i: key(problem, i))
        consider(_place(problem, order, problem.first_fit), f"first-fit-by-{order_name}")
        consider(_place(problem, order, problem.best_fit), f"best-fit-by-{order_name}")
    if best_height > problem.lower_bound:
        low, high = problem.lower_bound, best_height - alignment  # bisect the height (a heuristic:
        while low <= high and best_height > problem.lower_bound:  # feasibility is not monotone)
            middle = low + (high - low) // alignment // 2 * alignment if low > problem.lower_bound else low
            offsets = _two_sided(problem, middle)
            consider(offsets, "two-sided")
            if offsets is not None:
                high = min(middle, best_height) - alignment
            else:
                low = middle + alignment
    if best_height > problem.lower_bound and search_budget > 0:
        search = _Search(problem, best_offsets, search_budget)
        offsets = search.run()
        if search.improved:
            consider(offsets, "search")
    return problem.plan(best_offsets, best_name)
