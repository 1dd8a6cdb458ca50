"""Steering: add α·v to decoder-block outputs during generation (docs/architecture.md §3.6).

- :class:`SteeringVector` — layer -> direction, saved as safetensors + JSON manifest.
- :func:`from_contrast` / :func:`from_groups` — build vectors from two text sets or RET groups.
- :func:`steer` — context manager with PyTorch forward hooks for plain ``transformers`` models.
- :func:`nnsight_generate` — the same steering through nnsight interventions in ``generate``.
- :class:`ClosedLoop` / :func:`closed_loop_generate` — detect the macrostate with the RET
  encoder each step, steer only while it is (not) in chosen groups.
- :func:`generate` — batched continuations of prompts, open- or closed-loop steered.
- :func:`sweep` → :class:`SweepResult` — share of generated tokens in a target group and perplexity
  vs α; its best α under a fluency budget and the gain with a paired bootstrap CI. Its pieces
  (:mod:`~ret_toolkit.steering.evaluate`: generate, re-read; :mod:`~ret_toolkit.steering.sweep_result`:
  score) serve evaluations that share one α = 0 run among several vectors.
- :func:`load_reader`, :func:`find_outputs`, :func:`group_vector` — RET checkpoint and
  group vectors from a ``ret-macro`` / ``ret-demo`` directory.

Layer ℓ is the output of decoder block ℓ (0-based), as ``/hidden/<ℓ>`` in the trajectory store.
"""

from activation_cache.lazy import lazy_exports

# Names load their module on first use: importing a settings module of this package stays light.
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "ClosedLoop": "ret_toolkit.steering.closed_loop",
    "ContrastSettings": "ret_toolkit.steering.settings",
    "Generation": "ret_toolkit.steering.generate",
    "GenerationSettings": "ret_toolkit.steering.settings",
    "MacrostateReader": "ret_toolkit.steering.detect",
    "RETOutputs": "ret_toolkit.steering.ret_source",
    "SteerResult": "ret_toolkit.steering.run",
    "SteerSettings": "ret_toolkit.steering.settings",
    "Steering": "ret_toolkit.steering.hooks",
    "SteeringVector": "ret_toolkit.steering.vector",
    "SweepPoint": "ret_toolkit.steering.sweep_result",
    "SweepResult": "ret_toolkit.steering.sweep_result",
    "closed_loop_generate": "ret_toolkit.steering.closed_loop",
    "find_outputs": "ret_toolkit.steering.ret_source",
    "from_contrast": "ret_toolkit.steering.construct",
    "from_groups": "ret_toolkit.steering.construct",
    "generate": "ret_toolkit.steering.generate",
    "group_vector": "ret_toolkit.steering.ret_source",
    "language_model": "ret_toolkit.steering.nnsight_steer",
    "load_reader": "ret_toolkit.steering.detect",
    "nnsight_generate": "ret_toolkit.steering.nnsight_steer",
    "render_prompts": "ret_toolkit.steering.evaluate",
    "run_steer": "ret_toolkit.steering.run",
    "steer": "ret_toolkit.steering.hooks",
    "sweep": "ret_toolkit.steering.evaluate",
})
