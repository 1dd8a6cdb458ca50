"""The result of :func:`~ret_toolkit.planning.run.run_planning`: the ``planning.json`` record with its table and figures."""

from __future__ import annotations

from ret_toolkit.results import RecordResult

__all__ = ["PlanningResult"]


class PlanningResult(RecordResult):
    """Planning analyses of one task model (a mapping over the ``planning.json`` record).

    Keys: ``task``, ``path_nodes`` (path-finding only), ``model``, ``n_samples``,
    ``settings`` (the :class:`~ret_toolkit.planning.ProbeSettings`), ``accuracy``
    (``accuracy`` in 0..1 over ``n`` held-out samples), ``horizon`` (``curve``: per τ
    the MI in bits, its nMI with bootstrap CI and the permutation-null mean, and
    ``given_tokens``: the MI given the tokens read and predicted at T+τ-1),
    ``branch`` (path-finding only: ``paired``, the
    :class:`~ret_toolkit.planning.branch.BranchAwareness` record, or None with a
    ``note``), ``history`` (MI of the decision code with earlier
    blocks per layer group) and ``seconds``.
    """

    def table(self) -> str:
        """Accuracy, the horizon curve one τ a line and, for path-finding, the branch ratio."""
        acc = self["accuracy"]
        lines = [f"{self['task']}: accuracy {acc['accuracy']:.3f} (n={acc['n']})"]
        for c in self["horizon"]["curve"]:
            g = c["given_tokens"]
            lines.append(f"  tau={c['tau']:>2}  nMI {c['nmi']:.3f} [{c['nmi_ci_low']:.3f}, {c['nmi_ci_high']:.3f}]  "
                         f"MI {c['mi']:.3f} bits (null {c['null_mean']:.3f})  "
                         f"given tokens {g['cmi']:.3f} (null {g['null_mean']:.3f}, p {g['p_value']:.3g})")
        b = self.get("branch") or {}
        if b.get("paired"):
            from ret_toolkit.planning.branch import BranchAwareness

            lines += ["  " + line for line in BranchAwareness(**b["paired"]).table().splitlines()]
        elif b:
            lines.append(f"  branch awareness not tested: {b['note']}")
        return "\n".join(lines)

    def figure(self):
        """The horizon curve with CIs and null level (plotly)."""
        from ret_toolkit.viz.planning import horizon_figure

        return horizon_figure([self])
