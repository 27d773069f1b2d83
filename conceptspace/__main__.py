"""``python -m conceptspace …`` and ``accelerate launch -m conceptspace …``: the ``conceptspace`` command."""

from conceptspace.cli import main

if __name__ == "__main__":
    main()
