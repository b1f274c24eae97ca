"""aggtrio: merged crypto order books from several venues, streamed over gRPC."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("aggtrio")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
