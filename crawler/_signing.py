"""Request signing for the Action-style API.

The signature is the SHA1 hex digest of every request parameter except
``Signature`` itself, sorted by name and written as ``name + value`` with no
separators and no URL escaping, followed by the private key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from decimal import Decimal

__all__ = ["format_value", "sign"]


def format_value(value: object) -> str:
    """Render one parameter value the way the server renders it for signing."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        # repr() is the shortest exact form, but may use an exponent.
        text = repr(value)
        return format(Decimal(text), "f") if "e" in text else text
    return str(value)


def sign(params: Mapping[str, object], private_key: str) -> str:
    """Return the signature of ``params`` under ``private_key``.

    A ``Signature`` entry in ``params`` is ignored, so a signed request can be
    checked by signing it again.
    """
    parts = [
        name + (value if type(value) is str else format_value(value))
        for name, value in sorted(params.items())
        if name != "Signature"
    ]
    parts.append(private_key)
    return hashlib.sha1("".join(parts).encode("utf-8")).hexdigest()
