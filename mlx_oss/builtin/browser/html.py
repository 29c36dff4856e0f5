"""HTML -> the browser's page text: Markdown-like lines, links as `【id†text†domain】`, images as `[Image n: alt]`.

Parsing and layout are markdownify's (over BeautifulSoup with the standard library's parser); this
module only says how links and images look to the model, which is what the browser's citations and
`open(id=...)` rely on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlparse

from bs4 import BeautifulSoup
from markdownify import MarkdownConverter

__all__ = ["PageText", "html_to_text", "neutralize", "domain_of"]

# Characters the model reads as browser markup; page text must not forge links or citations.
_MARKUP = str.maketrans({"【": "〖", "】": "〗", "\u200b": ""})
_DROP_TAGS = ("script", "style", "noscript", "template", "svg", "math", "iframe", "object", "canvas", "head")


def neutralize(text: str) -> str:
    """Page or snippet text with the browser's markup brackets replaced by look-alikes."""
    return text.translate(_MARKUP)


def domain_of(url: str) -> str:
    return urlparse(url).netloc


@dataclass
class PageText:
    title: str
    text: str
    links: dict[int, str] = field(default_factory=dict)


class _Converter(MarkdownConverter):
    """markdownify with numbered links (ids shared by repeated URLs) and numbered image placeholders."""

    def __init__(self, base_url: str, **options) -> None:
        super().__init__(**options)
        self.base_url = base_url
        self.links: dict[int, str] = {}
        self._ids: dict[str, int] = {}
        self._images = 0

    def convert_a(self, el, text, parent_tags):
        href = (el.get("href") or "").strip()
        text = " ".join(text.split()).replace("†", "‡")
        if not text or not href or href.startswith("#"):  # an anchor in this page
            return text
        url = urljoin(self.base_url, href)  # mailto:, javascript:, data:, ... keep their scheme: refused below
        if urlparse(url).scheme not in ("http", "https") or not domain_of(url):
            return text
        link_id = self._ids.setdefault(url, len(self._ids))
        self.links[link_id] = url
        domain = domain_of(url)
        if domain == domain_of(self.base_url):
            return f"【{link_id}†{text}】"
        return f"【{link_id}†{text}†{domain}】"

    def convert_img(self, el, text, parent_tags):
        name = " ".join((el.get("alt") or el.get("title") or "").split())
        n = self._images
        self._images += 1
        return f"[Image {n}: {name}]" if name else f"[Image {n}]"


def html_to_text(html: str, url: str = "", title: str | None = None) -> PageText:
    """Readable text of an HTML document; `title` overrides the document's <title>."""
    soup = BeautifulSoup(neutralize(html), "html.parser")
    doc_title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for tag in soup.find_all(_DROP_TAGS):
        tag.decompose()
    conv = _Converter(
        url,
        heading_style="ATX",
        bullets="*",
        escape_asterisks=False,
        escape_underscores=False,
        escape_misc=False,
        strong_em_symbol="",
    )
    text = conv.convert_soup(soup)
    text = re.sub(r"[ \t]+\n", "\n", text)  # markdownify's line breaks ("  \n") and trailing spaces
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return PageText(title or doc_title or domain_of(url), text, conv.links)
