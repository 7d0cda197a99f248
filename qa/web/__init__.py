"""The web chat: ask about the articles, read each cited quote in its article, and add articles to the index."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: Gradio must not phone home

from .page import build_app, serve  # noqa: E402

__all__ = ["build_app", "serve"]
