"""RET macrostates: a causal encoder whose z_t predicts its own future (docs/architecture.md §3.1).

    from ret_toolkit.macro import build_macrostates, load_ret, train
    run = train(["gen.h5"], layers="15", max_epochs=8)            # Lightning, CSV logs + checkpoint
    res = build_macrostates(run.checkpoint, "gen.h5", "macro_out", k=12)
    ret = load_ret(res.checkpoint)                                 # RETModule with its centroids
"""

from ret_toolkit.macro.assign import load_ret, open_macro
from ret_toolkit.macro.datamodule import TrajectoryDataModule
from ret_toolkit.macro.evaluate import consistency_difference
from ret_toolkit.macro.heldout import HeldOutEvaluation, evaluate_sequences
from ret_toolkit.macro.module import RETModule
from ret_toolkit.macro.pipeline import MacroResult, build_macrostates, checkpoint_split, format_metrics
from ret_toolkit.macro.rank import RepresentationCollapsed, effective_rank
from ret_toolkit.macro.train import TrainResult, train, wire_model

__all__ = ["HeldOutEvaluation", "MacroResult", "RETModule", "RepresentationCollapsed", "TrainResult", "TrajectoryDataModule",
           "build_macrostates", "checkpoint_split", "consistency_difference", "effective_rank", "evaluate_sequences", "format_metrics", "load_ret", "open_macro",
           "train", "wire_model"]
