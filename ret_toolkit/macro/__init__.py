"""RET macrostates: a causal encoder whose z_t predicts its own future (docs/architecture.md §3.1).

    from ret_toolkit.macro import build_macrostates, load_ret, train
    run = train(["gen.h5"], layers="15", max_epochs=8)            # Lightning, CSV logs + checkpoint
    res = build_macrostates(run.checkpoint, "gen.h5", "macro_out", n_macrostates=12)
    ret = load_ret(res.checkpoint)                                 # RETModule with its centroids

What a grouping carries beyond the current token (predictive and semantic information, held
out, with nulls) is :mod:`~ret_toolkit.macro.beyond_token`; RET and its baselines on one
scorecard, with paired CIs per row, is :mod:`~ret_toolkit.macro.scorecard`.
"""

from activation_cache.lazy import lazy_exports

# Names load their module on first use: importing a settings module of this package stays light.
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "EvaluationSettings": "ret_toolkit.macro.settings",
    "HeldOutEvaluation": "ret_toolkit.macro.heldout",
    "MacroResult": "ret_toolkit.macro.pipeline",
    "MacroSettings": "ret_toolkit.macro.settings",
    "RETModule": "ret_toolkit.macro.module",
    "RepresentationCollapsed": "ret_toolkit.macro.rank",
    "TrainResult": "ret_toolkit.macro.train",
    "TrajectoryDataModule": "ret_toolkit.macro.datamodule",
    "build_macrostates": "ret_toolkit.macro.pipeline",
    "checkpoint_split": "ret_toolkit.macro.pipeline",
    "consistency_difference": "ret_toolkit.macro.evaluate",
    "effective_rank": "ret_toolkit.macro.rank",
    "evaluate_sequences": "ret_toolkit.macro.heldout",
    "format_metrics": "ret_toolkit.macro.pipeline",
    "load_ret": "ret_toolkit.macro.assign",
    "open_macro": "ret_toolkit.macro.assign",
    "ret_groups": "ret_toolkit.macro.heldout",
    "train": "ret_toolkit.macro.train",
    "wire_model": "ret_toolkit.macro.train",
})
