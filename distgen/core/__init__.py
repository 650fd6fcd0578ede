"""Leaves every layer may use: the time grid, counter-based random numbers, the compiled-kernel
cache. Nothing here imports another part of distgen except :mod:`distgen.errors`."""
