r"""Breadth-first exploration of a model's state space, the way TLC does it.

Generic over the model: a model supplies its initial states and a ``next``
function yielding ``(label, successor)`` pairs for one state.  States must be
hashable.  The counts are comparable with TLC's:

* ``distinct`` is TLC's "distinct states found" (a stuttering step such as a
  terminal ``Done`` finds no new state);
* ``generated`` counts initial states plus every (label, successor) pair,
  seen or not: TLC's "states generated" as long as no action yields the
  same successor twice (TLC enumerates each disjunct of an action, so an
  action with ``A \/ B`` in its guard counts twice where both hold);
* ``depth`` is TLC's "depth of the complete state graph search": TLC counts
  the initial states as depth 1, so it is the longest shortest path from an
  initial state, in steps, plus one.  (That is what TLC reports with one
  worker; with several, its search is not strictly level by level and the
  reported depth can be larger.)
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["StateGraph", "can_reach", "explore", "reachable"]

S = TypeVar("S", bound=Hashable)
L = TypeVar("L")

NextFn = Callable[[S], Iterable[tuple[L, S]]]


@dataclass
class StateGraph(Generic[S, L]):
    """The result of :func:`explore`.

    ``levels`` maps each reachable state to its BFS level (0 for initial
    states); ``edges`` holds ``(state, label, successor)`` triples when asked
    for; ``deadlocks`` lists the states with no successor at all (stuttering
    steps count as successors, as in TLC).
    """

    levels: dict[S, int]
    generated: int
    deadlocks: list[S] = field(default_factory=list)
    edges: set[tuple[S, L, S]] | None = None

    @property
    def distinct(self) -> int:
        """Number of distinct reachable states (TLC's "distinct states found")."""
        return len(self.levels)

    @property
    def diameter(self) -> int:
        """Longest shortest path, in steps, from an initial state to any state."""
        return max(self.levels.values(), default=0)

    @property
    def depth(self) -> int:
        """TLC's search depth: the diameter plus one (initial states are depth 1)."""
        return self.diameter + 1 if self.levels else 0

    @property
    def states(self) -> set[S]:
        """The reachable states."""
        return set(self.levels)


def explore(
    init: Iterable[S],
    next: NextFn,
    *,
    keep_edges: bool = False,
    max_states: int | None = None,
) -> StateGraph:
    """Explore every state reachable from ``init`` breadth first.

    ``next(s)`` yields ``(label, successor)`` for each enabled action
    instance.  With ``keep_edges`` the whole labelled graph is kept.  If more
    than ``max_states`` distinct states are found, raise ``ValueError``
    rather than run out of memory or time.
    """
    levels: dict[S, int] = {}
    queue: deque[S] = deque()
    generated = 0
    for s in init:
        generated += 1
        if s not in levels:
            levels[s] = 0
            queue.append(s)
    edges: set[tuple[S, L, S]] | None = set() if keep_edges else None
    deadlocks: list[S] = []
    while queue:
        s = queue.popleft()
        level = levels[s] + 1
        any_successor = False
        for label, t in next(s):
            any_successor = True
            generated += 1
            if edges is not None:
                edges.add((s, label, t))
            if t not in levels:
                levels[t] = level
                queue.append(t)
                if max_states is not None and len(levels) > max_states:
                    raise ValueError(
                        f"state space exceeds max_states={max_states}; "
                        "use smaller constants or raise the bound"
                    )
        if not any_successor:
            deadlocks.append(s)
    return StateGraph(levels=levels, generated=generated, deadlocks=deadlocks, edges=edges)


def reachable(init: Iterable[S], next: NextFn, *, max_states: int | None = None) -> set[S]:
    """The set of states reachable from ``init`` (see :func:`explore`)."""
    return explore(init, next, max_states=max_states).states


def can_reach(g: StateGraph[S, L], goal: Callable[[S], bool]) -> set[S]:
    """The states of *g* from which some state satisfying *goal* is reachable.

    A backward search over the graph's edges: the necessary condition of a
    liveness goal (what is pending can always still be resolved).
    """
    back: dict[S, list[S]] = defaultdict(list)
    for s, _, t in g.edges:
        back[t].append(s)
    found = {s for s in g.levels if goal(s)}
    queue = deque(found)
    while queue:
        t = queue.popleft()
        for s in back[t]:
            if s not in found:
                found.add(s)
                queue.append(s)
    return found
