"""locallab-gguf: the LocalLab REST API over GGUF models, with continuous batching."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("locallab-gguf")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
