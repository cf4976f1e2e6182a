"""The operator's page (page.html, shipped with the package) and the headers it is served with.

The page is static and holds no data: its script polls /status with the
bearer token the operator gives it.  Its Content-Security-Policy allows
only its own inline script (by hash) and style, and fetches to this origin
only; so even markup that slipped into the page from a submission would run
nothing and load nothing (the script already shows data as text only).
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files

HTML = files(__package__).joinpath("page.html").read_text()


def _script_hash(html: str) -> str:
    [script] = re.findall(r"<script>(.*?)</script>", html, re.S)
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"


HEADERS = {
    "Content-Security-Policy": f"default-src 'none'; script-src {_script_hash(HTML)}; style-src 'unsafe-inline'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
