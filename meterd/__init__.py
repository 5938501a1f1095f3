"""meterd: what a token really costs on your own hardware."""

__version__ = "0.2.0"
