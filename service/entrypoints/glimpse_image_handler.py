"""TorchServe's entry point for glimpse image archives (copied into each .mar).

TorchServe imports this file by name and instantiates the one class it
defines; glimpse's runtime does the same, so both engines run this handler.
"""

from service.handlers.image import ImageHandler


class GlimpseImageHandler(ImageHandler):
    """The image handler, as TorchServe finds it."""
