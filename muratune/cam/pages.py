"""The CAM export's offline index page: thumbnails grouped by study, rendered from a Jinja template."""

from __future__ import annotations

from collections.abc import Sequence

import jinja2

TEMPLATE = "index.html.j2"


def render_index(studies: Sequence[dict], title: str, details: str) -> str:
    """An offline HTML page of thumbnails grouped by study (relative links only, every string escaped).

    Args:
        studies: what ``study_rows`` returns: per study its path, body part, probability, threshold, 0/1 label
            and image records (``png``, ``json``, ``view``, ``probability``).
        title: the page title.
        details: one paragraph under the title.
    """
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("muratune.cam", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    rows = [{**study, "verdict": "abnormal" if study["label"] else "normal"} for study in studies]
    return env.get_template(TEMPLATE).render(studies=rows, title=title, details=details)
