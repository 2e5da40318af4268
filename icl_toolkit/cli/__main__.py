"""``python -m icl_toolkit.cli``: the ``icl`` command, for launchers that take a module (``accelerate launch -m``)."""

from icl_toolkit.cli import main

if __name__ == "__main__":
    main()
