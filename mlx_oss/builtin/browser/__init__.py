"""The built-in `browser` tool gpt-oss was trained on: search, open, find, citations."""

from mlx_oss.builtin.browser.fetch import BrowserError, FetchLimits, Fetcher
from mlx_oss.builtin.browser.page import Page
from mlx_oss.builtin.browser.search import (
    SEARCH_BACKENDS,
    ExaSearch,
    NoSearch,
    SearchBackend,
    SearchResult,
    SearxngSearch,
    YouSearch,
    make_search_backend,
)
from mlx_oss.builtin.browser.tool import Browser, BrowserAnswer

__all__ = [
    "SEARCH_BACKENDS",
    "Browser",
    "BrowserAnswer",
    "BrowserError",
    "ExaSearch",
    "FetchLimits",
    "Fetcher",
    "NoSearch",
    "Page",
    "SearchBackend",
    "SearchResult",
    "SearxngSearch",
    "YouSearch",
    "make_search_backend",
]
