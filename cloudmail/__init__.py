"""cloudmail: a complete, self-hosted mail server on one Twisted reactor."""

__version__ = "0.1.0"
