"""The result of an α sweep: one :class:`SweepPoint` per α, the best α under a fluency budget and its gain with a CI.

:func:`~ret_toolkit.steering.evaluate.sweep` returns a :class:`SweepResult`;
``ret-steer --sweep`` writes its :meth:`SweepResult.to_json` as ``sweep.json``,
prints :meth:`SweepResult.table` and saves :meth:`SweepResult.figure`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = ["SweepPoint", "SweepResult", "score_point"]


@dataclass
class SweepPoint:
    """One α of a sweep.

    Attributes:
        alpha: steering coefficient (0 = unsteered).
        share: fraction of generated tokens in the target group (0..1).
        perplexity: exp(mean NLL) of the generated tokens under the unsteered model.
        n_tokens: generated tokens counted (all prompts).
        n_prompts: prompts.
        group_shares: share of every group 0..K-1 (sums to 1), to see where the mass went.
        prompt_counts: per prompt ``[tokens in the target group, generated tokens]``
            (for bootstrap intervals over prompts, :meth:`SweepResult.gain_ci`).
        example: the first prompt's continuation, decoded.
    """

    alpha: float
    share: float
    perplexity: float
    n_tokens: int
    n_prompts: int
    group_shares: list[float] = field(default_factory=list)
    prompt_counts: list[list[int]] = field(default_factory=list)
    example: str = ""


def score_point(alpha: float, target_group: int, scored: Sequence[tuple[np.ndarray, np.ndarray]], k: int,
                example: str = "") -> SweepPoint:
    """Pool per-prompt ``(nll, groups)`` (nats per token, group per token) into a :class:`SweepPoint`."""
    nll = np.concatenate([s[0] for s in scored]) if scored else np.zeros(0)
    groups = np.concatenate([s[1] for s in scored]) if scored else np.zeros(0, np.int64)
    n = int(len(groups))
    per_prompt = [[int((s[1] == target_group).sum()), int(len(s[1]))] for s in scored]
    if n == 0:
        return SweepPoint(float(alpha), float("nan"), float("nan"), 0, len(scored), [0.0] * k, per_prompt, example)
    counts = np.bincount(groups, minlength=k)[:k]
    return SweepPoint(float(alpha), float((groups == target_group).mean()), float(math.exp(nll.mean())), n,
                      len(scored), (counts / n).tolist(), per_prompt, example)


@dataclass
class SweepResult:
    """Share of the target group and perplexity for every α of one sweep.

    Attributes:
        target_group: the RET group steered toward.
        points: one :class:`SweepPoint` per α, ascending; α = 0 is always there.
        settings: how the points were generated (positions, max_new_tokens,
            do_sample, seed, n_prompts, k, reader_layers, vector_layers).
        max_ppl_ratio: the fluency budget of :meth:`best`: perplexity at most
            this many times α = 0's.
        vector: the steering vector's manifest, when known.
    """

    target_group: int
    points: list[SweepPoint]
    settings: dict[str, Any]
    max_ppl_ratio: float = 1.5
    vector: dict[str, Any] | None = None

    @property
    def baseline(self) -> SweepPoint:
        """The α = 0 point: the plain model's own continuations."""
        return next(p for p in self.points if p.alpha == 0.0)

    def point(self, alpha: float) -> SweepPoint:
        return next(p for p in self.points if p.alpha == float(alpha))

    def best(self, max_ppl_ratio: float | None = None) -> SweepPoint:
        """The point with the highest share among α >= 0 whose perplexity is within the budget.

        The budget is ``max_ppl_ratio`` (default :attr:`max_ppl_ratio`) times
        α = 0's perplexity; α = 0 itself always qualifies, so the answer exists.
        Note that the best of several α, chosen and read on the same prompts,
        is an optimistic estimate of what that α does on new prompts.
        """
        budget = self.max_ppl_ratio if max_ppl_ratio is None else max_ppl_ratio
        base = self.baseline
        ok = [p for p in self.points if p.alpha >= 0 and p.n_tokens > 0 and p.perplexity <= budget * base.perplexity]
        return max(ok or [base], key=lambda p: (p.share, -p.alpha))

    def gain(self, max_ppl_ratio: float | None = None) -> float:
        """Share at :meth:`best` minus share at α = 0 (0 when no α helps)."""
        return float(self.best(max_ppl_ratio).share - self.baseline.share)

    def gain_ci(self, alpha: float | None = None, n_boot: int = 2000, level: float = 0.95,
                seed: int = 0) -> tuple[float, float]:
        """Percentile bootstrap interval of share(α) − share(0), resampling prompts (paired: same prompts).

        ``alpha`` defaults to :meth:`best`'s. Each resample draws prompts with
        replacement and pools their tokens, as :func:`score_point` does. When
        α is itself the best of several points on the same prompts, the
        interval does not cover that selection step.
        """
        a = np.asarray(self.point(self.best().alpha if alpha is None else alpha).prompt_counts, float)
        b = np.asarray(self.baseline.prompt_counts, float)
        if len(a) == 0 or len(a) != len(b):
            return float("nan"), float("nan")
        idx = np.random.default_rng(seed).integers(0, len(a), size=(n_boot, len(a)))
        with np.errstate(invalid="ignore", divide="ignore"):
            diff = a[idx, 0].sum(1) / a[idx, 1].sum(1) - b[idx, 0].sum(1) / b[idx, 1].sum(1)
        diff = diff[np.isfinite(diff)]
        if len(diff) == 0:
            return float("nan"), float("nan")
        lo, hi = np.quantile(diff, [(1 - level) / 2, (1 + level) / 2])
        return float(lo), float(hi)

    def to_json(self) -> dict[str, Any]:
        """The ``sweep.json`` record: points, baseline, settings, best α, gain and its CI."""
        best = self.best()
        out = {"target_group": self.target_group, "points": [asdict(p) for p in self.points],
               "baseline": asdict(self.baseline), "settings": self.settings, "best_alpha": best.alpha,
               "max_ppl_ratio": self.max_ppl_ratio, "share_gain": self.gain(),
               "share_gain_ci": list(self.gain_ci())}
        if self.vector is not None:
            out["vector"] = self.vector
        return out

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> SweepResult:
        """Read back a :meth:`to_json` record (a ``sweep.json``)."""
        return cls(int(record["target_group"]), [SweepPoint(**p) for p in record["points"]], record["settings"],
                   float(record.get("max_ppl_ratio", 1.5)), record.get("vector"))

    def table(self) -> str:
        """The sweep as text: one row per α (share, perplexity and its ratio to α = 0, tokens, example)."""
        base, best = self.baseline, self.best()
        lines = [f"target group {self.target_group}: {self.settings['n_prompts']} prompts, "
                 f"up to {self.settings['max_new_tokens']} new tokens each",
                 f"{'alpha':>7}{'share':>8}{'perplexity':>12}{'x base':>8}{'tokens':>8}  example"]
        for p in self.points:
            mark = " *" if p.alpha == best.alpha else "  "
            ratio = p.perplexity / base.perplexity if base.perplexity else float("nan")
            example = " ".join(p.example.split())[:60]
            lines.append(f"{p.alpha:>7.3g}{p.share:>8.3f}{p.perplexity:>12.2f}{ratio:>8.2f}{p.n_tokens:>8}{mark} "
                         f"{example!r}")
        return "\n".join(lines)

    def figure(self):
        """Share and perplexity ratio vs α (plotly; :func:`ret_toolkit.viz.steering.sweep_figure`)."""
        from ret_toolkit.viz.steering import sweep_figure

        return sweep_figure([self], self.max_ppl_ratio)
