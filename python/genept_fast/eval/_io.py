"""Shared helpers of the evaluation reports: atomic files, number formatting, figure rendering."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genept_fast._atomic import atomic_write_bytes
from genept_fast._outputs import check_output
from genept_fast._version import versions

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from matplotlib.figure import Figure

__all__ = [
    "CATEGORY_COLORS",
    "REPORT_FILES",
    "atomic_write_bytes",
    "figure_png",
    "fmt",
    "json_bytes",
    "markdown_table",
    "palette",
    "safe_name",
    "versions",
    "write_report_files",
]


def _plain(obj: Any) -> Any:
    """Numpy scalars/arrays and NaN to what JSON can hold (NaN and ±inf become null)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_plain(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def json_bytes(obj: Any) -> bytes:
    """Deterministic, indented UTF-8 JSON (strict: no NaN)."""
    text = json.dumps(_plain(obj), indent=2, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode()


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats to ``digits`` decimals, missing values as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, float | np.floating):
        if not math.isfinite(float(value)):
            return "–"
        return f"{float(value):.{digits}f}"
    return str(value)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table (``|`` in cells escaped)."""
    lines = [
        "| " + " | ".join(_md_escape(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines.extend("| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows)
    return "\n".join(lines)


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(text: str) -> str:
    """A file-name-safe version of ``text`` (other characters become ``_``)."""
    name = _UNSAFE.sub("_", text).strip("._")
    return name or "embedding"


#: Ten colours for categories, distinct in hue and lightness, also with deuteranopia and
#: protanopia. Taken from Okabe & Ito, Paul Tol's sets, seaborn's "colorblind" and tab10 and
#: chosen (greedily, the most distinct first) so that every pair is at least 35 CIELAB units
#: apart, and 18 under a simulated colour-vision deficiency (Machado 2009); tab10 has pairs 5
#: apart there, and its blue and cyan made CD14+ Monocyte and Dendritic look alike in the demo.
CATEGORY_COLORS: tuple[str, ...] = (
    "#DE8F05",  # orange
    "#332288",  # indigo
    "#009988",  # teal
    "#000000",  # black
    "#FBAFE4",  # pink
    "#D62728",  # red
    "#1F77B4",  # blue
    "#ECE133",  # yellow
    "#882255",  # wine
    "#8C564B",  # brown
)


def palette(n: int) -> list[Any]:
    """``n`` distinguishable colours (RGBA): :data:`CATEGORY_COLORS` up to ten, then tab20,
    else evenly spaced on a rainbow map."""
    from matplotlib import colormaps
    from matplotlib.colors import to_rgba

    if n <= len(CATEGORY_COLORS):
        return [to_rgba(c) for c in CATEGORY_COLORS[:n]]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    cmap = colormaps["gist_rainbow"]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def new_figure(width: float, height: float, *, dpi: float = 100) -> Figure:
    """A matplotlib figure detached from pyplot (no global state, any backend); its PNG has
    ``dpi`` pixels per inch."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=dpi, layout="constrained")


def figure_png(fig: Figure) -> bytes:
    """Render ``fig`` to PNG bytes with the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


#: The files every report writes (its figures come on top).
REPORT_FILES = ("report.json", "report.md")


def write_report_files(
    out_dir: Path, pngs: Mapping[str, bytes], data: Any, markdown: str, *, overwrite: bool = False
) -> dict[str, Path]:
    """Write the PNGs, then ``report.json``, then ``report.md``, each atomically.

    The folder is created if needed and never removed; a file of the report that exists is
    refused unless ``overwrite`` (see :mod:`genept_fast._outputs`). Nothing else in the folder
    is touched.
    """
    out_dir = Path(out_dir)
    check_output(out_dir, kind="folder", overwrite=overwrite, names=[*pngs, *REPORT_FILES])
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, png in pngs.items():
        path = out_dir / name
        atomic_write_bytes(path, png)
        written[name] = path
    for name, payload in (("report.json", json_bytes(data)), ("report.md", markdown.encode())):
        path = out_dir / name
        atomic_write_bytes(path, payload)
        written[name] = path
    return written
