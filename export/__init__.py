"""The torch-free side of dip-compile: regenerate an exported result with onnxruntime, numpy and pillow only.

Installed as ``dip_compile.replay``; ``export/regenerate.py`` also runs standalone.
"""
