"""Rendering: the Markdown templates, then that Markdown to one self-contained HTML page.

The HTML is the Markdown rendered by markdown-it-py (CommonMark plus tables, raw HTML disabled) in
templates/report.html.j2; headings get GitHub's anchors, and every figure is embedded as a base64 PNG
``data:`` URI until ``max_inline_bytes``, then linked relative to the output directory.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markdown_it import MarkdownIt
from markupsafe import Markup

from .fmt import FILTERS

TEMPLATES = Path(__file__).resolve().parent / "templates"
TITLE = "Deep time-to-first-spike networks: reproduction report"
DEFAULT_MAX_INLINE_BYTES = 40_000_000


def slug(text: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to dashes."""
    kept = "".join(ch for ch in text.strip().lower() if ch.isalnum() or ch in "-_ ")
    return kept.replace(" ", "-")


def environment(filters: dict) -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined, trim_blocks=True,
                      lstrip_blocks=True, keep_trailing_newline=True,
                      autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=False))
    env.filters.update(FILTERS | filters | {"slug": slug})
    return env


def markdown(env: Environment, context: dict) -> str:
    text = env.get_template("report.md.j2").render(context)
    while "\n\n\n" in text:  # optional parts leave blank lines behind; Markdown needs one
        text = text.replace("\n\n\n", "\n\n")
    return text.strip("\n") + "\n"


class _Images:
    """markdown-it image rule: figures under the output directory become data: URIs within the budget."""

    def __init__(self, out_dir: Path, budget: int):
        self.out_dir, self.budget = out_dir, budget
        self.inlined = self.linked = 0

    def render(self, renderer, tokens, idx, options, env) -> str:
        token = tokens[idx]
        src = str(token.attrGet("src"))
        data = Path(os.path.normpath(self.out_dir / src)).read_bytes()  # out_dir need not exist yet
        if self.inlined + len(data) <= self.budget:
            token.attrSet("src", "data:image/png;base64," + base64.b64encode(data).decode("ascii"))
            self.inlined += len(data)
        else:
            self.linked += 1
        return renderer.image(tokens, idx, options, env)


def _anchors(state) -> None:
    """Core rule: id="<GitHub anchor>" on every heading, so the contents list links work."""
    for i, token in enumerate(state.tokens):
        if token.type == "heading_open":
            token.attrSet("id", slug(state.tokens[i + 1].content.replace("`", "")))


def html(env: Environment, md: str, out_dir: Path, max_inline_bytes: int) -> str:
    images = _Images(out_dir, max_inline_bytes)
    parser = MarkdownIt("commonmark", {"html": False, "xhtmlOut": False}).enable("table")
    parser.core.ruler.push("anchors", _anchors)
    parser.add_render_rule("image", lambda renderer, *args: images.render(renderer, *args))
    body = parser.render(md)
    return env.get_template("report.html.j2").render(
        title=TITLE, body=Markup(body), linked=images.linked, inline_mb=max_inline_bytes // 1_000_000)
