"""The ``irm`` command line (see :mod:`irm.cli.app`)."""

from irm.cli.app import app, main

__all__ = ["app", "main"]
