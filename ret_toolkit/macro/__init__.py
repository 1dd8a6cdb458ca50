"""RET macrostates: a causal encoder whose z_t predicts its own future (docs/architecture.md §3.1)."""

from ret_toolkit.macro.encoder import CausalWindowEncoder, HorizonPredictor
from ret_toolkit.macro.module import RETModule, cosine_momentum
from ret_toolkit.macro.rank import RepresentationCollapsed, collapse_message, effective_rank

__all__ = [
    "CausalWindowEncoder",
    "HorizonPredictor",
    "RETModule",
    "RepresentationCollapsed",
    "collapse_message",
    "cosine_momentum",
    "effective_rank",
]
