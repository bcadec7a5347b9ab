"""Web pages as files: the HTML, CSS and JavaScript of ``map.html`` and the review page live
in the package's ``static/`` folders (where editors and ESLint see them) and are filled here.

Templates name their slots ``{{name}}``. Slots are filled in one pass, so a value is never
scanned for slots itself. Data for a page's script goes in as JSON inside a
``<script type="application/json">`` element (:func:`json_for_script`), never by string
formatting into the script.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from importlib import resources

_SLOT = re.compile(r"\{\{(\w+)\}\}")


@functools.cache
def static_text(package: str, name: str) -> str:
    """The text of ``static/NAME`` in ``package`` (read once per process)."""
    return resources.files(package).joinpath("static", name).read_text(encoding="utf-8")


def fill(template: str, values: Mapping[str, str]) -> str:
    """``template`` with each ``{{name}}`` replaced by ``values[name]``.

    Raises:
        KeyError: the template names a slot that ``values`` lacks (a bug, not a user error).
    """
    return _SLOT.sub(lambda m: values[m.group(1)], template)


def json_for_script(payload: object) -> str:
    """JSON safe inside a ``<script>`` element: no ``</script>`` or ``<!--`` can form."""
    text = json.dumps(payload, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
