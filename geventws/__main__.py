"""``python -m geventws``: the same as the ``geventws`` command."""

from .cli import main

if __name__ == "__main__":  # pragma: no branch
    raise SystemExit(main())
