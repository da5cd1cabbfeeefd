"""Benchmarks and studies (not tests): a package so that they import each other and ``benchmarks.common`` as
``benchmarks.X``.

Run one from the repo root as ``python benchmarks/X.py``, ``python -m benchmarks.X`` or ``python -m benchmarks X``
(``python -m benchmarks`` lists them); importing one runs nothing.
"""
