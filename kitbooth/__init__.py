"""KitBooth: shared entry points (settings, CLI, version). Torch-free."""

from kitbooth.settings import Settings, load_settings

__version__ = "0.1.0"

__all__ = ["Settings", "__version__", "load_settings"]
