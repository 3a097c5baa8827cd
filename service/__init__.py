"""glimpse's service: serve `.mar` archives with predictions, heatmaps and attributions."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("glimpse")  # pyproject.toml's version, the one source
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
