"""HTML of the reports (Jinja2, every value escaped) and the PDF made from it (WeasyPrint).

Images are embedded as ``data:`` URIs, so one HTML file is the whole report and opens
offline; a Content-Security-Policy forbids loading anything else.
"""

from __future__ import annotations

import base64
import io
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from wsi.errors import BackendUnavailableError
from wsi.outputs import write_output

__all__ = ["DISCLAIMER", "check_pdf", "data_uri", "render", "write_pdf"]

DISCLAIMER = (
    "Assistive second opinion from research software. It does not make a diagnosis: the "
    "diagnosis is the pathologist's, made on the slide itself."
)

_TEMPLATES = Path(__file__).parent / "templates"
PDF_FIX = (
    "PDF reports need WeasyPrint and the Pango library: `pip install weasyprint` and, on "
    "Debian/Ubuntu, `apt-get install libpango-1.0-0 libpangoft2-1.0-0`; or pass --no-pdf."
)


def data_uri(image: Any, fmt: str = "JPEG", quality: int = 85) -> str:
    """An RGB array or PIL image as a ``data:`` URI (JPEG or PNG)."""
    from PIL import Image

    img = Image.fromarray(np.asarray(image)) if isinstance(image, np.ndarray) else image
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="PNG", optimize=True)
    mime = "image/jpeg" if fmt == "JPEG" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def pct(x: float | None, digits: int = 0) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def prob(x: float | None) -> str:
    """A probability as a reader should see it: never a false "100%" or "0%"."""
    if x is None:
        return "n/a"
    if x < 0.001:
        return "<0.1%"
    if x > 0.999:
        return ">99.9%"
    return f"{100 * x:.1f}%"


def threshold_text(x: float) -> str:
    """An operating threshold: exact enough to read even when tiny (0.0042%)."""
    return f"{100 * x:.1f}%" if 0.001 <= x <= 0.999 else f"{100 * x:.2g}%"


@cache
def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_TEMPLATES)),
        autoescape=True,  # every value from a slide, manifest or model card becomes text
        undefined=jinja2.StrictUndefined,
        trim_blocks=False,
    )
    env.globals["pct"] = pct
    env.globals["prob"] = prob
    env.globals["threshold_text"] = threshold_text
    return env


def render(template: str, **context: Any) -> str:
    """Render ``templates/<template>`` with the report stylesheet inlined."""
    from markupsafe import Markup

    css = Markup((_TEMPLATES / "report.css").read_text())  # our own file: not escaped
    return str(_environment().get_template(template).render(css=css, **context))


def check_pdf() -> None:
    """BackendUnavailableError naming the fix when WeasyPrint or Pango is missing: checked
    before a cohort starts, so no slide is half reported."""
    try:
        import weasyprint  # noqa: F401 - loads Pango through cffi
    except (ImportError, OSError) as err:
        raise BackendUnavailableError(f"cannot write PDF reports ({err}). {PDF_FIX}") from err


def write_pdf(html: str, path: Path) -> Path:
    """Render ``html`` to a PDF at ``path`` (atomically). BackendUnavailableError naming the
    fix when WeasyPrint or Pango is missing."""
    try:
        import weasyprint
    except (ImportError, OSError) as err:
        raise BackendUnavailableError(f"{path}: cannot write the PDF ({err}). {PDF_FIX}") from err
    # data: URIs only: a report never loads a file or a network resource
    fetcher = weasyprint.URLFetcher(allowed_protocols={"data"})
    pdf = weasyprint.HTML(string=html, url_fetcher=fetcher).write_pdf()
    return write_output(path, pdf)
