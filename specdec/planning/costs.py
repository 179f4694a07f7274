"""Measured costs of drafting and verifying, used to choose draft shapes (layer L1)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

#: Planners that chose not to draft for this many steps draft once to re-measure acceptance (and a
#: chain planner that may choose k = 0 re-measures a plain step as often while drafting).
PROBE_EVERY = 16

#: Weight of a new measurement in the running (decayed) means of `CostProfile.observe`.
NEW_WEIGHT = 0.3


@dataclass
class CostProfile:
    """Seconds per draft level and per target verification of n tokens, measured on this hardware.

    A profile is measured once per SpeculativeModel and then fixed, so that the draft shapes chosen
    during a seeded sampling run depend only on the random draws, and the run is reproducible. Without
    one, a controller starts from an empty profile and `observe`s its own steps into it.
    """

    draft_level_seconds: float = 0.0
    verify_seconds: dict[int, float] = field(default_factory=dict)
    draft_measured: bool = False
    #: With `split_draft_costs`: a model-drafting step costs draft_step_seconds (its first pass over
    #: the pending tokens, set-up) + depth * draft_level_seconds + nodes * draft_node_seconds.
    draft_step_seconds: float = 0.0
    draft_node_seconds: float = 0.0

    def draft(self, depth: int, nodes: int) -> float:
        """Seconds for the draft model to propose `nodes` nodes in `depth` levels (0 for none)."""
        if nodes == 0 or depth == 0:
            return 0.0
        return self.draft_step_seconds + depth * self.draft_level_seconds + nodes * self.draft_node_seconds

    def observe(
        self,
        levels: int,
        verified_tokens: int,
        draft_time: float | None,
        verify_time: float | None,
        nodes: int | None = None,
    ) -> None:
        """Fold one step's times into decayed means: `draft_time` for `levels` draft passes proposing
        `nodes` nodes (default: one per level), `verify_time` for verifying `verified_tokens` tokens
        (None: not counted, e.g. the prefill). A split draft cost (step, level, node) is scaled as a
        whole towards the observed time."""
        nodes = levels if nodes is None else nodes
        predicted = self.draft(levels, nodes)
        if draft_time is not None and (self.draft_step_seconds or self.draft_node_seconds) and predicted > 0:
            scale = (1 - NEW_WEIGHT) + NEW_WEIGHT * draft_time / predicted
            self.draft_step_seconds *= scale
            self.draft_level_seconds *= scale
            self.draft_node_seconds *= scale
        elif draft_time is not None:
            per_level = draft_time / max(levels, 1)
            old = self.draft_level_seconds
            self.draft_level_seconds = (
                (1 - NEW_WEIGHT) * old + NEW_WEIGHT * per_level if self.draft_measured else per_level
            )
            self.draft_measured = True
        if verify_time is not None:
            old = self.verify_seconds.get(verified_tokens)
            self.verify_seconds[verified_tokens] = (
                verify_time if old is None else (1 - NEW_WEIGHT) * old + NEW_WEIGHT * verify_time
            )

    def verify(self, num_tokens: int) -> float:
        """Seconds to verify `num_tokens`: piecewise-linear between measured sizes, linear beyond, over the
        measured times made non-decreasing in size (`monotone_fit`): verifying more tokens never costs
        less, and a noisy profile read as it is (measured on a shared CPU: 65 tokens 776 ms, 1 token
        949 ms) has the planner draft its largest trees because they look cheaper than none."""
        points = self._fitted_points()
        if not points:
            return 1.0
        if len(points) == 1 or num_tokens <= points[0][0]:
            return points[0][1]
        for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
            if num_tokens <= x1:
                return y0 + (y1 - y0) * (num_tokens - x0) / (x1 - x0)
        (x0, y0), (x1, y1) = points[-2], points[-1]
        slope = max((y1 - y0) / (x1 - x0), 0.0)
        return y1 + slope * (num_tokens - x1)

    def _fitted_points(self) -> list[tuple[int, float]]:
        """The measured (size, seconds) points, sorted and made non-decreasing; cached per profile state."""
        key = tuple(sorted(self.verify_seconds.items()))
        cached = self.__dict__.get("_fit_cache")
        if cached is None or cached[0] != key:
            fitted = monotone_fit([y for _, y in key])
            cached = (key, [(x, y) for (x, _), y in zip(key, fitted, strict=True)])
            self.__dict__["_fit_cache"] = cached
        return cached[1]


def monotone_fit(values: list[float]) -> list[float]:
    """The non-decreasing sequence closest to `values` in least squares (pool adjacent violators):
    a run of sizes measured out of order gets their mean. Monotone input comes back unchanged."""
    blocks: list[list[float]] = []  # [sum, count] per pooled block
    for value in values:
        blocks.append([value, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    fitted: list[float] = []
    for total, count in blocks:
        fitted.extend([total / count] * int(count))
    return fitted


def split_draft_costs(chain1: float, chain4: float, tree: float, tree_depth: int, tree_nodes: int):
    """(step, level, node) seconds from three measured proposals: a 1-token chain, a 4-token chain and
    a tree of `tree_nodes` nodes in `tree_depth` levels, solving t = step + depth * level + nodes * node
    (chains have one node per level, so their per-level cost is level + node; clamped at 0)."""
    per_chain_level = max((chain4 - chain1) / 3, 0.0)  # level + node
    step = max(chain1 - per_chain_level, 0.0)
    node = (tree - step - tree_depth * per_chain_level) / max(tree_nodes - tree_depth, 1)
    node = min(max(node, 0.0), per_chain_level)
    return step, per_chain_level - node, node


def planning_costs(
    profile: CostProfile | None, do_sample: bool, lockstep: bool = False
) -> tuple[CostProfile | None, bool]:
    """(the profile a generation plans with, whether it refines it with its own step times).

    Greedy output does not depend on the plan, so a greedy generation refines a private copy; sampling
    plans with the profile as measured, so a seeded run repeats exactly on the same model. lockstep:
    ranks of a tensor-parallel target, which must all plan alike; each rank's own step times differ, so
    none refines the (shared) profile."""
    if do_sample or lockstep or profile is None:
        return profile, False
    return copy.deepcopy(profile), True
