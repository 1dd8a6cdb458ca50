"""Steering: add α·v to decoder-block outputs during generation (docs/architecture.md §3.6).

- :class:`SteeringVector` — layer -> direction, saved as safetensors + JSON manifest.
- :func:`from_contrast` / :func:`from_groups` — build vectors from two text sets or RET groups.
- :func:`steer` — context manager with PyTorch forward hooks for plain ``transformers`` models.
- :func:`nnsight_generate` — the same steering through nnsight interventions in ``generate``.
- :class:`ClosedLoop` / :func:`closed_loop_generate` — detect the macrostate with the RET
  encoder each step, steer only while it is (not) in chosen groups.
- :func:`generate` — batched continuations of prompts, open- or closed-loop steered.
- :func:`sweep` → :class:`SweepResult` — share of generated tokens in a target group and perplexity
  vs α; its best α under a fluency budget and the gain with a paired bootstrap CI.
- :func:`load_reader`, :func:`find_outputs`, :func:`group_vector` — RET checkpoint and
  group vectors from a ``ret-macro`` / ``ret-demo`` directory.

Layer ℓ is the output of decoder block ℓ (0-based), as ``/hidden/<ℓ>`` in the trajectory store.
"""

from ret_toolkit.steering.closed_loop import ClosedLoop, closed_loop_generate
from ret_toolkit.steering.construct import from_contrast, from_groups
from ret_toolkit.steering.detect import MacrostateReader, load_reader
from ret_toolkit.steering.evaluate import render_prompts, sweep
from ret_toolkit.steering.generate import Generation, generate
from ret_toolkit.steering.hooks import Steering, steer
from ret_toolkit.steering.nnsight_steer import language_model, nnsight_generate
from ret_toolkit.steering.ret_source import RETOutputs, find_outputs, group_vector
from ret_toolkit.steering.sweep_result import SweepPoint, SweepResult
from ret_toolkit.steering.vector import SteeringVector

__all__ = [
    "ClosedLoop", "Generation", "MacrostateReader", "RETOutputs", "Steering", "SteeringVector", "SweepPoint",
    "SweepResult", "closed_loop_generate", "find_outputs", "from_contrast", "from_groups", "generate", "group_vector",
    "language_model", "load_reader", "nnsight_generate", "render_prompts", "steer", "sweep",
]
