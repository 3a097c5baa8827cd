"""TorchServe-compatible handlers: the same code runs in glimpse's runtime and in TorchServe."""
