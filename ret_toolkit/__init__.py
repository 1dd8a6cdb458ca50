"""ret_toolkit: learned macrostates (RET), VQ-VAE information probes, forecasting and steering.

The verbs of the main job, from one import (loaded on first use, so
``import ret_toolkit`` stays cheap)::

    import ret_toolkit as ret

    ret.extract(ret.ExtractConfig(prompts="reasoning", out="gen.h5", generate=32, chat=True, layers="15"))
    run = ret.train_ret(["gen.h5"], layers="15", max_epochs=8)        # RET encoder (Lightning)
    res = ret.build_macrostates(run.checkpoint, "gen.h5", "macro", n_macrostates=12)
    with ret.open_store("gen.h5") as store:
        print(store)
    loaded = ret.load_model()                                          # embedded SmolLM2-135M-Instruct
    vec = ret.group_vector("macro", group=3, model=loaded)             # toward macrostate 3
    print(ret.generate(loaded, ["What is 7 times 8?"], vec, alpha=0.3)[0].text)
    with ret.steer(loaded, vec, alpha=0.3):
        ...                                                            # your own generate
    ret.run_forecast("bank", "forecast_out", macro_ckpt=res.checkpoint)

Where a result came from: ``environment_record()`` (package versions, CPU,
kernels, threads, for a result file), ``read_lock`` and ``lock_differences``
(a pip constraints file such as the repository's ``constraints.txt``).

Each subpackage (``ret_toolkit.macro``, ``.vq``, ``.steering``, ``.sycophancy``,
``.planning``, ``.info``) exposes its own verbs and types. The demo job (``make demo``)
is :mod:`~ret_toolkit.demo` (its prompts, ``demo_prompts``), sized by
:mod:`~ret_toolkit.demo_settings`.
"""

from activation_cache._version import __version__
from activation_cache.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "load_model": "activation_cache.models",
    "ExtractConfig": "activation_cache.extract_config",
    "extract": "activation_cache.extraction",
    "open_store": "activation_cache.reader",
    "train_ret": "ret_toolkit.macro.train:train",
    "build_macrostates": "ret_toolkit.macro.pipeline",
    "SteeringVector": "ret_toolkit.steering.vector",
    "steer": "ret_toolkit.steering.hooks",
    "group_vector": "ret_toolkit.steering.ret_source",
    "generate": "ret_toolkit.steering.generate",
    "sweep": "ret_toolkit.steering.evaluate",
    "run_forecast": "ret_toolkit.sycophancy.run",
    "environment_record": "ret_toolkit.environment",
    "lock_differences": "ret_toolkit.environment",
    "read_lock": "ret_toolkit.environment",
}, eager={"__version__": __version__})
