"""dip-compile: Deep Image Prior restoration with a compiled fitting core and exportable results."""

__version__ = "0.1.0"
