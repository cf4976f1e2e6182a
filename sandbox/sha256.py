"""SHA-256 of small things (a policy file, a chain id, a manifest) without loading OpenSSL.

hashlib's sha256 is OpenSSL's, and loading it costs every start some 3 ms.
CPython builds its own SHA-256 into the interpreter (`_sha256` up to 3.11);
it is slower on bulk data, so layers, hashed as they stream, still go
through hashlib.
"""

from __future__ import annotations

try:
    from _sha256 import sha256  # type: ignore[import-not-found]
except ImportError:  # another interpreter, or a later CPython (_sha2): hashlib's
    from hashlib import sha256


def hexdigest(data: bytes) -> str:
    return str(sha256(data).hexdigest())
