"""RET macrostates: a causal encoder whose z_t predicts its own future (docs/architecture.md §3.1).

    from ret_toolkit.macro import build_macrostates, load_ret, train
    run = train(["gen.h5"], layers="15", max_epochs=8)            # Lightning, CSV logs + checkpoint
    res = build_macrostates(run.checkpoint, "gen.h5", "macro_out", k=12)
    ret = load_ret(res.checkpoint)                                 # RETModule with its centroids
"""

from ret_toolkit.macro.assign import load_ret
from ret_toolkit.macro.datamodule import TrajectoryDataModule
from ret_toolkit.macro.encoder import CausalWindowEncoder, HorizonPredictor
from ret_toolkit.macro.module import RETModule, cosine_momentum
from ret_toolkit.macro.pipeline import MacroResult, build_macrostates
from ret_toolkit.macro.rank import RepresentationCollapsed, collapse_message, effective_rank
from ret_toolkit.macro.train import TrainResult, train, wire_model

__all__ = [
    "CausalWindowEncoder",
    "HorizonPredictor",
    "MacroResult",
    "RETModule",
    "RepresentationCollapsed",
    "TrainResult",
    "TrajectoryDataModule",
    "build_macrostates",
    "collapse_message",
    "cosine_momentum",
    "effective_rank",
    "load_ret",
    "train",
    "wire_model",
]
