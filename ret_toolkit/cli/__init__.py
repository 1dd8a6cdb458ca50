"""Console commands of ret_toolkit (``ret-train``, ``ret-macro``, ``ret-demo``)."""
