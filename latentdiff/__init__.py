"""latentdiff: text-to-image latent diffusion you can read, train and trust.

``from latentdiff import Pipeline`` is resolved lazily (module ``__getattr__``) so that ``import latentdiff``
and ``latentdiff --help`` do not import torch or diffusers.
"""
from importlib.metadata import version as _v

try:
    __version__ = _v("latentdiff")
except Exception:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["Pipeline", "__version__"]


def __getattr__(name: str):
    if name == "Pipeline":
        from latentdiff.pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'latentdiff' has no attribute {name!r}")
