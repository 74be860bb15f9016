"""gateway: a WebSocket streaming chat gateway for vision-language models."""

__version__ = "0.1.0"
