"""tunelab: train, evaluate and compare ways of adapting a pretrained language model."""

__version__ = "0.1.0"
