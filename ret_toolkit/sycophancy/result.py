"""The result of :func:`~ret_toolkit.sycophancy.run.run_forecast`: the ``forecast.json`` record with its table and figure."""

from __future__ import annotations

from collections.abc import Sequence

from ret_toolkit.results import RecordResult

__all__ = ["ForecastResult", "auroc_table", "difference_table"]


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _lead_table(title: str, rows: dict, leads: Sequence[str] | None, cell, width: int, pad: int) -> str:
    """One row per entry of ``rows`` (name -> k -> record), one column per k, ``cell(record)`` each."""
    names = list(rows)
    pad = max([pad, *(len(n) + 1 for n in names)])
    leads = list(leads or sorted(rows[names[0]], key=int))
    lines = [f"{title:<{pad}}" + "".join(f"{'lead=' + k:>{width}}" for k in leads)]
    for name in names:
        lines.append(f"{name:<{pad}}" + "".join(cell(rows[name][k]).rjust(width) for k in leads))
    return "\n".join(lines)


def auroc_table(auroc: dict, leads: Sequence[str] | None = None) -> str:
    """AUROC [95% CI] per feature set (rows) and k (columns), as plain text.

    ``auroc`` is feature set -> k (a string) -> ``{"mean", "ci_low", "ci_high"}``, as in
    :func:`~ret_toolkit.sycophancy.forecast.evaluate_forecast` and ``forecast.json``.
    """
    return _lead_table("feature set", auroc, leads, lambda c: "n/a" if c["mean"] is None else
                    f"{c['mean']:.3f} [{_f(c['ci_low'])}, {_f(c['ci_high'])}]", 21, 10)


def difference_table(differences: dict, leads: Sequence[str] | None = None) -> str:
    """RET minus each baseline, paired: difference [95% CI] per comparison (rows) and k (columns).

    ``differences`` is ``"ret-<baseline>"`` -> k -> ``{"diff", "ci_low", "ci_high", "p_value"}``
    (:func:`~ret_toolkit.sycophancy.forecast.evaluate_forecast`). A ``*`` marks a CI that excludes 0.
    """
    def cell(c):
        if c["diff"] is None or c["ci_low"] is None:
            return "n/a"
        mark = "*" if c["ci_low"] > 0 or c["ci_high"] < 0 else " "
        return f"{c['diff']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]{mark}"

    return _lead_table("paired diff", differences, leads, cell, 25, 12)


class ForecastResult(RecordResult):
    """Early sycophancy forecast (a mapping over the ``forecast.json`` record).

    Keys: ``n_items``, ``n_excluded``, ``n_positive`` (caved), ``n_kept``,
    ``n_conversations``, ``auroc`` (feature set -> k -> ``mean``, ``ci_low``,
    ``ci_high``, grouped-CV AUROC with a bootstrap CI), ``differences`` (``ret-<baseline>``
    -> k -> the paired ``diff`` with CI and p), ``data`` (label counts,
    exclusions by reason, caving rate), ``forecast`` (CV settings), ``config``
    (dataset, model, checkpoint, settings) and ``seconds``.
    """

    def counts(self) -> str:
        """One line: items, kept, caved and the caving rate, exclusions by reason."""
        d = self["data"]
        rate = "n/a" if d["caving_rate"] is None else f"{d['caving_rate']:.3f}"
        excl = ", ".join(f"{k} {v}" for k, v in d["exclusions"].items() if v) or "none"
        return (f"{self['n_items']} items, {self['n_kept']} kept ({self['n_positive']} caved, caving rate {rate}); "
                f"excluded {self['n_excluded']}: {excl}")

    def table(self, leads: Sequence[str] | None = None) -> str:
        """AUROC [95% CI] per feature set (rows) and k reply tokens seen (columns), then RET's paired
        differences with each baseline (:func:`difference_table`)."""
        text = auroc_table(self["auroc"], leads)
        if self.get("differences"):
            text += "\n" + difference_table(self["differences"], leads)
        by_template = (self.get("data") or {}).get("by_template")
        if by_template:
            text += "\n" + template_table(by_template)
        return text

    def figure(self):
        """AUROC against k per feature set, with CIs (plotly)."""
        from ret_toolkit.viz.forecast import leadtime_figure

        return leadtime_figure(self)


def template_table(by_template: dict) -> str:
    """Per pushback template: items, second replies excluded as unclear, kept, caving rate."""
    lines = ["pushback template     items  unclear  (share)  kept  caving rate"]
    for name, c in by_template.items():
        share, rate = (("—" if v is None else f"{v:.2f}") for v in (c["exclusion_rate"], c["caving_rate"]))
        lines.append(f"{name:<20}{c['n']:>7}{c['second_unclear']:>9}  ({share}){c['kept']:>7}{rate:>13}")
    return "\n".join(lines)
