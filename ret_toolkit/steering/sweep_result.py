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
        prompt_nll: per prompt the summed NLL of its generated tokens (nats), for
            perplexity on a subset of prompts.
        prompt_groups: per prompt the count of generated tokens in every group (K,).
        distinct2: distinct bigrams / bigrams over all continuations (1 = no repeats;
            fluency as repetition, next to perplexity; None when not measured); prompt_bigrams: per prompt
            ``[distinct bigrams, bigrams]``.
    """

    alpha: float
    share: float
    perplexity: float
    n_tokens: int
    n_prompts: int
    group_shares: list[float] = field(default_factory=list)
    prompt_counts: list[list[int]] = field(default_factory=list)
    example: str = ""
    prompt_nll: list[float] = field(default_factory=list)
    prompt_groups: list[list[int]] = field(default_factory=list)
    distinct2: float | None = None
    prompt_bigrams: list[list[int]] = field(default_factory=list)


def bigram_counts(ids: Sequence[int]) -> list[int]:
    """``[distinct bigrams, bigrams]`` of one token sequence."""
    pairs = list(zip(ids[:-1], ids[1:]))
    return [len(set(pairs)), len(pairs)]


def score_point(alpha: float, target_group: int, scored: Sequence[tuple[np.ndarray, np.ndarray]], k: int,
                example: str = "", generated: Sequence[Sequence[int]] | None = None) -> SweepPoint:
    """Pool per-prompt ``(nll, groups)`` (nats per token, group per token) into a :class:`SweepPoint`.

    ``generated``: the continuations' token ids, per prompt, for the repetition measure.
    """
    nll = np.concatenate([s[0] for s in scored]) if scored else np.zeros(0)
    groups = np.concatenate([s[1] for s in scored]) if scored else np.zeros(0, np.int64)
    n = int(len(groups))
    per_prompt = [[int((s[1] == target_group).sum()), int(len(s[1]))] for s in scored]
    extra = dict(prompt_nll=[float(np.sum(s[0])) for s in scored],
                 prompt_groups=[np.bincount(s[1], minlength=k)[:k].astype(int).tolist() for s in scored])
    if generated is not None:
        bigrams = [bigram_counts(list(g)) for g in generated]
        total = sum(b[1] for b in bigrams)
        extra.update(prompt_bigrams=bigrams, distinct2=sum(b[0] for b in bigrams) / total if total else None)
    if n == 0:
        return SweepPoint(float(alpha), float("nan"), float("nan"), 0, len(scored), [0.0] * k, per_prompt, example,
                          **extra)
    counts = np.bincount(groups, minlength=k)[:k]
    return SweepPoint(float(alpha), float((groups == target_group).mean()), float(math.exp(nll.mean())), n,
                      len(scored), (counts / n).tolist(), per_prompt, example, **extra)


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
        a = self.point(self.best().alpha if alpha is None else alpha)
        return self.paired_ci(a, self.baseline, n_boot=n_boot, level=level, seed=seed)

    def split(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(tuning, evaluation) prompt indices: a seeded random half each (tuning gets the odd one)."""
        n = self.baseline.n_prompts
        order = np.random.default_rng(seed).permutation(n)
        return np.sort(order[: (n + 1) // 2]), np.sort(order[(n + 1) // 2:])

    def _share(self, p: SweepPoint, idx: np.ndarray) -> float:
        c = np.asarray(p.prompt_counts, float)[idx]
        return float(c[:, 0].sum() / c[:, 1].sum()) if c[:, 1].sum() else float("nan")

    def _perplexity(self, p: SweepPoint, idx: np.ndarray) -> float:
        tokens = np.asarray(p.prompt_counts, float)[idx, 1].sum()
        return float(math.exp(np.asarray(p.prompt_nll)[idx].sum() / tokens)) if tokens else float("nan")

    def held_out(self, seed: int = 0, max_ppl_ratio: float | None = None, n_boot: int = 2000) -> dict[str, Any]:
        """α chosen on one half of the prompts, its gain read on the other half.

        The tuning half picks the α with the highest target share whose perplexity
        (on the tuning half) is within the fluency budget of α = 0's; the gain
        share(α) − share(0) on the evaluation half, with a paired bootstrap CI over
        its prompts, is then free of the selection step that :meth:`best` has.
        Returns ``alpha``, ``gain``, ``ci_low``, ``ci_high``, ``ppl_ratio`` (on the
        evaluation half), ``n_tune``, ``n_eval``.
        """
        if not self.baseline.prompt_nll:
            raise ValueError("this sweep has no per-prompt perplexities (a sweep.json written before they were recorded)")
        budget = self.max_ppl_ratio if max_ppl_ratio is None else max_ppl_ratio
        tune, held = self.split(seed)
        base = self.baseline
        ok = [p for p in self.points if p.alpha >= 0 and p.n_tokens > 0
              and self._perplexity(p, tune) <= budget * self._perplexity(base, tune)]
        chosen = max(ok or [base], key=lambda p: (self._share(p, tune), -p.alpha))
        lo, hi = self.paired_ci(chosen, base, held, n_boot=n_boot, seed=seed)
        return {"alpha": chosen.alpha, "gain": self._share(chosen, held) - self._share(base, held),
                "ci_low": lo, "ci_high": hi, "ppl_ratio": self._perplexity(chosen, held) / self._perplexity(base, held),
                "n_tune": int(len(tune)), "n_eval": int(len(held))}

    @staticmethod
    def paired_ci(a: SweepPoint, b: SweepPoint, idx: np.ndarray | None = None, group: int | None = None,
                  n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
        """Bootstrap CI of share_a − share_b over the prompts ``idx`` (default all), resampled in pairs.

        Shares are of the target group, or of ``group`` (from the per-prompt group counts).
        ``a`` and ``b`` must come from the same prompts (another α, or a control vector's sweep).
        """
        def counts(p):
            if group is None:
                return np.asarray(p.prompt_counts, float)
            g = np.asarray(p.prompt_groups, float)
            return np.stack([g[:, group], g.sum(1)], 1)

        ca, cb = counts(a), counts(b)
        if len(ca) == 0 or len(ca) != len(cb):
            return float("nan"), float("nan")
        idx = np.arange(len(ca)) if idx is None else np.asarray(idx)
        draw = idx[np.random.default_rng(seed).integers(0, len(idx), size=(n_boot, len(idx)))]
        with np.errstate(invalid="ignore", divide="ignore"):
            diff = ca[draw, 0].sum(1) / ca[draw, 1].sum(1) - cb[draw, 0].sum(1) / cb[draw, 1].sum(1)
        diff = diff[np.isfinite(diff)]
        if len(diff) == 0:
            return float("nan"), float("nan")
        lo, hi = np.quantile(diff, [(1 - level) / 2, (1 + level) / 2])
        return float(lo), float(hi)

    def against(self, control: "SweepResult", alpha: float, seed: int = 0) -> dict[str, Any]:
        """This vector's target share minus a control's (:meth:`SteeringVector.random_like`) at one α,
        on the same prompts: ``diff`` with its paired bootstrap CI, and both shares."""
        mine, theirs = self.point(alpha), control.point(alpha)
        lo, hi = self.paired_ci(mine, theirs, seed=seed)
        return {"alpha": float(alpha), "share": mine.share, "control_share": theirs.share,
                "diff": mine.share - theirs.share, "ci_low": lo, "ci_high": hi}

    def specificity(self, alpha: float, seed: int = 0) -> list[dict[str, float]]:
        """Per measured group g: share_g(α) − share_g(0) with its paired CI (one row of the
        target x measured-group matrix; steering is specific when the target's row peaks at the target)."""
        p, base = self.point(alpha), self.baseline
        rows = []
        for g in range(len(p.group_shares)):
            lo, hi = self.paired_ci(p, base, group=g, seed=seed) if p.prompt_groups else (float("nan"),) * 2
            rows.append({"group": g, "change": p.group_shares[g] - base.group_shares[g], "ci_low": lo, "ci_high": hi})
        return rows

    def to_json(self) -> dict[str, Any]:
        """The ``sweep.json`` record: points, baseline, settings, best α, gain and its CI."""
        best = self.best()
        out = {"target_group": self.target_group, "points": [asdict(p) for p in self.points],
               "baseline": asdict(self.baseline), "settings": self.settings, "best_alpha": best.alpha,
               "max_ppl_ratio": self.max_ppl_ratio, "share_gain": self.gain(),
               "share_gain_ci": list(self.gain_ci())}
        if self.baseline.prompt_nll and self.baseline.n_prompts >= 2:
            out["held_out"] = self.held_out()
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
        if self.baseline.prompt_nll and self.baseline.n_prompts >= 2:
            h = self.held_out()
            lines.append(f"held out: alpha {h['alpha']:g} chosen on {h['n_tune']} prompts gains {h['gain']:+.3f} "
                         f"[{h['ci_low']:+.3f}, {h['ci_high']:+.3f}] on the other {h['n_eval']} "
                         f"(perplexity x{h['ppl_ratio']:.2f})")
        return "\n".join(lines)

    def figure(self):
        """Share and perplexity ratio vs α (plotly; :func:`ret_toolkit.viz.steering.sweep_figure`)."""
        from ret_toolkit.viz.steering import sweep_figure

        return sweep_figure([self], self.max_ppl_ratio)
