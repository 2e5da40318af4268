"""The bottom layer: what every other layer uses and that uses nothing of the toolkit.

- :mod:`~icl_toolkit.core.errors`: every error the library raises on purpose;
- :mod:`~icl_toolkit.core.files`: file rules every writer shares (modes kept, outputs never inputs, OS errors as
  one line naming the file and the fix);
- :mod:`~icl_toolkit.core.artifacts`: metadata records of artefacts on disk and their checks;
- :mod:`~icl_toolkit.core.progress`: progress bars on stderr;
- :mod:`~icl_toolkit.core.hardware`: CPU features detected at run time;
- :mod:`~icl_toolkit.core.models`: where models come from (the embedded defaults, local folders, checkpoints).
"""

__version__ = "0.1.0"
