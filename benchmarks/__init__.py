"""Benchmarks and studies (not tests): a package so that they import each other as ``benchmarks.X``.

Run them from the repo root as ``python benchmarks/X.py`` (a script adds the root to ``sys.path`` only then) or
``python -m benchmarks.X``; importing one runs nothing.
"""
