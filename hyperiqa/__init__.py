"""HyperIQA with a fixed training solver. Plain PyTorch: this package never imports Ray."""

from hyperiqa.config import ConfigError, TrainConfig

__all__ = ["ConfigError", "TrainConfig"]
__version__ = "0.1.0"
