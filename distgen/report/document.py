"""A tiny document model rendered twice: Markdown (figures as files next to it) and one
self-contained HTML file (figures embedded as base64 data URIs). No Markdown library is needed
because both renderings come from the same blocks."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from distgen.io.outdir import write_bytes_atomic

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222;
       line-height: 1.45; padding: 0 1em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""


@dataclass
class Document:
    """Blocks in order: ``("h", level, text)``, ``("p", text)``, ``("table", header, rows)``,
    ``("fig", path, caption)``, ``("code", text)``."""

    title: str
    blocks: list = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", level, text))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", list(header), [list(map(str, r)) for r in rows]))

    def figure(self, path: Path, caption: str) -> None:
        self.blocks.append(("fig", Path(path), caption))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    def figures(self) -> list[Path]:
        return [b[1] for b in self.blocks if b[0] == "fig"]

    # ------------------------------------------------------------------ Markdown
    def markdown(self, folder: Path) -> str:
        out = [f"# {self.title}", ""]
        n_fig = 0
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out += ["#" * block[1] + " " + block[2], ""]
            elif kind == "p":
                out += [block[1], ""]
            elif kind == "code":
                out += ["```", block[1], "```", ""]
            elif kind == "table":
                header, rows = block[1], block[2]
                out.append("| " + " | ".join(_md_cell(c) for c in header) + " |")
                out.append("|" + "|".join("---" if i == 0 else "---:"
                                          for i in range(len(header))) + "|")
                out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
                out.append("")
            elif kind == "fig":
                n_fig += 1
                rel = Path(block[1]).resolve().relative_to(folder.resolve()).as_posix()
                out += [f"![Figure {n_fig}]({rel})", "", f"*Figure {n_fig}: {block[2]}*", ""]
        return "\n".join(out)

    # ------------------------------------------------------------------ HTML
    def html(self) -> str:
        e = html.escape
        out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
               f"<title>{e(self.title)}</title><style>{_CSS}</style></head><body>",
               f"<h1>{e(self.title)}</h1>"]
        n_fig = 0
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out.append(f"<h{block[1]}>{e(block[2])}</h{block[1]}>")
            elif kind == "p":
                out.append(f"<p>{_inline_code(e(block[1]))}</p>")
            elif kind == "code":
                out.append(f"<pre><code>{e(block[1])}</code></pre>")
            elif kind == "table":
                out.append("<table><thead><tr>" + "".join(f"<th>{e(c)}</th>" for c in block[1])
                           + "</tr></thead><tbody>")
                out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>"
                        for r in block[2]]
                out.append("</tbody></table>")
            elif kind == "fig":
                n_fig += 1
                data = base64.b64encode(Path(block[1]).read_bytes()).decode("ascii")
                out.append(f"<figure><img alt=\"Figure {n_fig}\" "
                           f"src=\"data:image/png;base64,{data}\">"
                           f"<figcaption>Figure {n_fig}: {_inline_code(e(block[2]))}"
                           "</figcaption></figure>")
        out.append("</body></html>")
        return "\n".join(out) + "\n"

    def write(self, folder: Path, stem: str = "report") -> tuple[Path, Path]:
        """Write ``<stem>.md`` and ``<stem>.html`` into ``folder`` (figures must be there)."""
        folder = Path(folder)
        md = write_bytes_atomic(folder / f"{stem}.md", self.markdown(folder).encode("utf-8"))
        page = write_bytes_atomic(folder / f"{stem}.html", self.html().encode("utf-8"))
        return md, page


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def _inline_code(escaped: str) -> str:
    """`text` -> <code>text</code> in already-escaped HTML."""
    parts = escaped.split("`")
    if len(parts) < 3:
        return escaped
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
