"""ret_toolkit: learned macrostates (RET), VQ-VAE information probes, forecasting and steering.

The verbs of the main job, from one import (loaded on first use, so
``import ret_toolkit`` stays cheap)::

    import ret_toolkit as ret

    ret.extract(ret.ExtractConfig(prompts="reasoning", out="gen.h5", generate=32, chat=True, layers="15"))
    run = ret.train_ret(["gen.h5"], layers="15", max_epochs=8)        # RET encoder (Lightning)
    res = ret.build_macrostates(run.checkpoint, "gen.h5", "macro", k=12)
    with ret.open_store("gen.h5") as store:
        print(store)
    loaded = ret.load_model()                                          # embedded SmolLM2-135M-Instruct
    vec = ret.group_vector("macro", group=3, model=loaded)             # toward macrostate 3
    print(ret.generate(loaded, ["What is 7 times 8?"], vec, alpha=0.3)[0].text)
    with ret.steer(loaded, vec, alpha=0.3):
        ...                                                            # your own generate
    ret.run_forecast("bank", "forecast_out", macro_ckpt=res.checkpoint)

Each subpackage (``ret_toolkit.macro``, ``.vq``, ``.steering``, ``.sycophancy``,
``.planning``, ``.info``) exposes its own verbs and types.
"""

from importlib import import_module

from activation_cache._version import __version__

#: public name -> (module, attribute)
_VERBS = {
    "load_model": ("activation_cache.models", "load_model"),
    "ExtractConfig": ("activation_cache.extract", "ExtractConfig"),
    "extract": ("activation_cache.extract", "extract"),
    "open_store": ("activation_cache.reader", "open_store"),
    "train_ret": ("ret_toolkit.macro.train", "train"),
    "build_macrostates": ("ret_toolkit.macro.pipeline", "build_macrostates"),
    "SteeringVector": ("ret_toolkit.steering.vector", "SteeringVector"),
    "steer": ("ret_toolkit.steering.hooks", "steer"),
    "group_vector": ("ret_toolkit.steering.ret_source", "group_vector"),
    "generate": ("ret_toolkit.steering.generate", "generate"),
    "run_forecast": ("ret_toolkit.sycophancy.run", "run_forecast"),
}

__all__ = ["__version__", *_VERBS]


def __getattr__(name: str):
    try:
        module, attr = _VERBS[name]
    except KeyError:
        raise AttributeError(f"module 'ret_toolkit' has no attribute {name!r}") from None
    value = getattr(import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
