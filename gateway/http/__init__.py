"""The HTTP edge: Flask views (``api/``), authentication, request bodies, logging, the page bundle.

Wire formats end here: each view parses its request into a typed one and calls a service of
``gateway.uploads`` or ``gateway.media``; nothing below this folder imports Flask.
"""
