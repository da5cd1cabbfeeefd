"""``python -m dip_compile``: the ``dipc`` command."""

from .cli import main

if __name__ == "__main__":
    main()
