from importlib.metadata import version as _v
try:
    __version__ = _v("latentdiff")
except Exception:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

