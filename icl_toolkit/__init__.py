from icl_toolkit.core import __version__

__all__ = ["__version__"]
