"""The report page: Markdown with figures written beside it, and the same page as HTML
(headings, tables, lists, images, emphasis: what the report uses).

    page = Page("runs/report")
    page.h(1, "raygal report")
    page.figure(fig, "pit.png", "PIT histograms ...")    # writes the PNG, numbers the caption
    page.skip("corner plot", "no model")                 # says on the page what is missing
    page.write()                                         # report.md and report.html
"""
from __future__ import annotations

import html
import io
import logging
import re

from .. import storage
from .plots import DPI

log = logging.getLogger("raygal.report")

PAGE = "report.md"
HTML_PAGE = "report.html"


class Page:
    """Collects the Markdown page and writes the figures beside it (local or s3://)."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.lines: list[str] = []
        self.figures: list[str] = []
        self.skipped: list[tuple[str, str]] = []
        self._n = 0

    def h(self, level: int, text: str) -> None:
        self.lines += ["#" * level + " " + text, ""]

    def p(self, text: str) -> None:
        self.lines += [text, ""]

    def md(self, text: str) -> None:
        self.lines += [text.rstrip("\n"), ""]

    def figure(self, fig, name: str, caption: str) -> None:
        """Save ``fig`` as ``name`` (PNG) beside the page and show it with ``caption``."""
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI)
        storage.write_bytes(storage.join(self.out_dir, name), buf.getvalue())
        self._n += 1
        self.figures.append(name)
        alt = re.sub(r"[\[\]]", "", caption.split(".")[0])
        self.lines += [f"![{alt}]({name})", "", f"*Figure {self._n}. {caption}*", ""]

    def skip(self, what: str, reason: str) -> None:
        self.skipped.append((what, reason))
        self.lines += [f"*Skipped — {what}: {reason}*", ""]

    def section(self, what: str, fn, *args) -> None:
        """Run ``fn(self, *args)``, one figure's code; a failure of an optional piece goes on
        the page, not up."""
        try:
            fn(self, *args)
        except Exception as exc:  # noqa: BLE001 - the report must not die for one figure
            log.warning("report: %s failed", what, exc_info=True)
            self.skip(what, f"failed with {type(exc).__name__}: {exc}")

    def markdown(self) -> str:
        return "\n".join(self.lines).rstrip("\n") + "\n"

    def write(self) -> str:
        """Write ``report.md`` and ``report.html``; returns the URI of ``report.md``."""
        md = self.markdown()
        storage.write_bytes(storage.join(self.out_dir, PAGE), md.encode())
        storage.write_bytes(storage.join(self.out_dir, HTML_PAGE), markdown_to_html(md).encode())
        return storage.join(self.out_dir, PAGE)


def demote(md: str, by: int = 2) -> str:
    """Markdown with every heading ``by`` levels deeper (to nest a page in another)."""
    return "\n".join(("#" * by + line) if line.startswith("#") else line
                     for line in md.splitlines())


# ----------------------------------------------------------------------------------------------
# Markdown -> HTML (just what the page uses: headings, tables, images, paragraphs, emphasis)
# ----------------------------------------------------------------------------------------------

def _inline(text: str) -> str:
    s = html.escape(text, quote=False)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    s = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)
    s = re.sub(r"(?<![\w*])\*([^*]+)\*(?![\w*])", r"<em>\1</em>", s)
    return s


def markdown_to_html(md: str, title: str = "raygal report") -> str:
    out = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">",
           f"<title>{html.escape(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;"
           "line-height:1.4}img{max-width:100%;border:1px solid #ddd}table{border-collapse:"
           "collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:"
           "right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
           "em{color:#444}</style>", "</head><body>"]
    lines = md.splitlines()
    para: list[str] = []

    def flush():
        if para:
            out.append("<p>" + _inline(" ".join(para)) + "</p>")
            para.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            flush()
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            out.append("<table>")
            for k, cells in enumerate(rows):
                if all(re.fullmatch(r":?-{3,}:?", c) for c in cells):
                    continue
                tag = "th" if k == 0 else "td"
                out.append("<tr>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in cells)
                           + "</tr>")
            out.append("</table>")
            continue
        if line.startswith("- "):
            flush()
            out.append("<ul>")
            while i < len(lines) and lines[i].startswith("- "):
                out.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("</ul>")
            continue
        m_h = re.match(r"^(#{1,6}) (.*)$", line)
        m_img = re.match(r"^!\[(.*?)\]\((.*?)\)$", line)
        if m_h:
            flush()
            k = len(m_h.group(1))
            out.append(f"<h{k}>{_inline(m_h.group(2))}</h{k}>")
        elif m_img:
            flush()
            out.append(f"<p><img src=\"{html.escape(m_img.group(2))}\" "
                       f"alt=\"{html.escape(m_img.group(1))}\"></p>")
        elif not line.strip():
            flush()
        else:
            para.append(line)
        i += 1
    flush()
    out.append("</body></html>")
    return "\n".join(out) + "\n"
