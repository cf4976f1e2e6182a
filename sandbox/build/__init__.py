"""`sbx build`: images from a Containerfile, a layer per step, with a build cache (builder.py)."""

from .builder import BuildError, Options, build

__all__ = ["BuildError", "Options", "build"]
