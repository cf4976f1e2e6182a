"""`sbx serve`: the sandbox over HTTP, in the same process as its pool (an ASGI app on hypercorn's trio worker)."""

from .app import ServiceConfig, create_app

__all__ = ["ServiceConfig", "create_app"]
