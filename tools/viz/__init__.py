"""``edgec viz``: a self-contained HTML graph visualizer for IR graphs.

``render_html(graph, before=..., overlay=..., title=...)`` returns one HTML file (inline CSS
and JavaScript, no network access); ``write_html(path, ...)`` writes it atomically. Layout is
done at build time by Graphviz ``dot`` (see :mod:`tools.viz.layout`).
"""

from tools.viz.layout import GraphvizNotFoundError, LayoutError
from tools.viz.render import render_html, write_html

__all__ = ["GraphvizNotFoundError", "LayoutError", "render_html", "write_html"]
