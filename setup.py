"""Only what pyproject.toml cannot say: the package list is the icl_toolkit tree found on disk plus
``icl_toolkit.prompts``, which lives in the top-level ``prompts/`` folder (mapped in pyproject.toml's
``[tool.setuptools.package-dir]``) so that the templates sit at the top of the repository and still ship in
the wheel."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["icl_toolkit", "icl_toolkit.*"]), "icl_toolkit.prompts"])
