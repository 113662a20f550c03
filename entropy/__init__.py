"""Probability models -> deterministic integer tables -> range coding (constriction).

Works on numpy arrays only; torch tensors are converted by the caller.
"""

from entropy.coder import (
    CategoricalTable,
    CorruptStreamError,
    Decoder,
    Encoder,
    EntropyError,
)

__all__ = ["CategoricalTable", "CorruptStreamError", "Decoder", "Encoder", "EntropyError"]
