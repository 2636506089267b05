"""The explorer folder's page files: the fixed page (``assets/``) and its data as a script."""

from __future__ import annotations

import json

#: the page's own files, shipped in ``tracinflow/explorer/assets/`` and copied as they are
ASSET_FILES = ("index.html", "explorer.css", "explorer.js")
#: the page's data, a script (a page opened from the file system may not fetch() a JSON file)
DATA_FILE = "data.js"


def data_script(payload: dict) -> str:
    """``data.js``: the payload as ``window.TRACINFLOW = {...};``. NaN and infinities are refused
    (JSON has none; the payload writes a missing value as null)."""
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    # "</" would end an inline script if the data were ever inlined; escaping it costs nothing
    return "window.TRACINFLOW = " + body.replace("</", "<\\/") + ";\n"
