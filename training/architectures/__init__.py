"""Model architecture files.

Each module here depends on torch alone: it is copied verbatim into the `.mar`
archive as the model file, and serving rebuilds the model from it and from the
architecture arguments in the archive's metadata, never from `training/`.
"""
