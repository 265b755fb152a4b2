"""keyturn: the human checkpoint between what an AI agent intends to do and the moment it does it."""

__version__ = "0.1.0"
