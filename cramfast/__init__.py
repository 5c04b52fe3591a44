"""cramfast: cram texts into a few trainable input vectors of a frozen causal LM, many at once.

    import cramfast
    lm = cramfast.load_model()                      # embedded SmolLM2-135M (4-bit-derived)
    [res] = cramfast.compress("Some text.", model=lm, n_mem=1)
    res.accuracy, res.exact, res.info_gain_bits
    cramfast.decode(res, model=lm)                  # the text, from the mem vectors

The engine's parts, for studies and benchmarks: cramfast.engine.
"""
from cramfast.engine.compressor import compress, compress_iter
from cramfast.engine.decoding import decode
from cramfast.engine.hooks import Hooks
from cramfast.errors import CramfastError
from cramfast.metrics import CompressionResult, capacity
from cramfast.models import DEFAULT_MODEL, LoadedModel, load_model, theoretical_capacity
from cramfast.results_io import load_results, save
from cramfast.settings import BatchSettings, TextSettings
from cramfast.version import __version__

__all__ = ["compress", "compress_iter", "decode", "load_model", "save", "load_results",
           "theoretical_capacity", "capacity", "CompressionResult", "TextSettings",
           "BatchSettings", "Hooks", "LoadedModel", "CramfastError", "DEFAULT_MODEL",
           "__version__"]
