"""``python -m dip_compile.cli``: the ``dipc`` command."""

from . import main

if __name__ == "__main__":
    main()
