"""Blocking: fine-tune with LoRA while keeping chosen directions from moving (BLOCK-EM's penalty).

- :class:`BlockedDirections` / :func:`from_steering_vector` — unit directions at decoder-block
  outputs, each with the sign whose moves are blocked; one safetensors file.
- :func:`from_conversations` — a direction from two sets of conversations (e.g. caved vs held
  replies): the difference of their mean completion-token outputs
  (:mod:`~ret_toolkit.blocking.contrast` also gives one set's means, to score conversations on it).
- :func:`blocking_penalty` — Σ_k ReLU(s_k (a_θ,k − a_base,k))² averaged over completion tokens
  (:mod:`~ret_toolkit.blocking.penalty` also has the KL-to-base baseline and the drift).
- :class:`BlockingModule` + :class:`ConversationDataModule` — the LightningModule and data of
  ``ret-train block fit``; :func:`block` runs them from Python.
- :func:`encode_conversation` — a chat conversation's ids and completion mask.

Layer ℓ is the output of decoder block ℓ (0-based), as ``/hidden/<ℓ>`` in the trajectory store.
"""

from activation_cache.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "BlockResult": "ret_toolkit.blocking.train",
    "BlockedDirections": "ret_toolkit.blocking.directions",
    "BlockingModule": "ret_toolkit.blocking.module",
    "ConversationDataModule": "ret_toolkit.blocking.datamodule",
    "block": "ret_toolkit.blocking.train",
    "blocking_penalty": "ret_toolkit.blocking.penalty",
    "encode_conversation": "ret_toolkit.blocking.conversations",
    "from_conversations": "ret_toolkit.blocking.contrast",
    "from_steering_vector": "ret_toolkit.blocking.directions",
})
