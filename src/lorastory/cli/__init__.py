"""The ``lorastory`` command line: thin wrappers that parse, call the library, print; one module per command group."""

from lorastory.cli.common import app
from lorastory.cli.main import main

__all__ = ["app", "main"]
