"""brain: the edge runtime of a learning robot."""
__version__ = "0.1.0"
