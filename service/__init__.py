"""glimpse's service: serve `.mar` archives with predictions, heatmaps and attributions."""

__version__ = "0.1.0"
