"""Layer-wise mixed-precision quantized KV cache (KVTuner). Importing the package registers the plugin
and its KV storages."""

from plugins.kv_mixed_precision.plugin import KVMixedPrecisionPlugin

__all__ = ["KVMixedPrecisionPlugin"]
