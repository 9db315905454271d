"""Compression as a lens: what a model already knows of a document, token by token (``measure``, ``audit``,
``show``)."""
