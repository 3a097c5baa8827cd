"""TorchServe's entry point for glimpse tabular archives (copied into each .mar).

TorchServe imports this file by name and instantiates the one class it
defines; glimpse's runtime does the same, so both engines run this handler.
"""

from service.handlers.tabular import TabularHandler


class GlimpseTabularHandler(TabularHandler):
    """The tabular handler, as TorchServe finds it."""
