"""tunelab's version (pyproject.toml says the same), written into every run's summary."""

__version__ = "0.1.0"
