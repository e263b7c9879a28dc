"""age (filippo.io/age) recipients of an encrypted weights export, parsed by the pyrage library.

Callers: the gateway checks `age_encryption_recipients` when `save_weights_external` is submitted
(a bad key is a 400 at once, not a failed future later); the runtime parses them again to encrypt
each exported file. Native `age1...` keys and SSH public keys (`ssh-ed25519 ...`, `ssh-rsa ...`)
are accepted, as Tinker documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyrage

from loraplane.core import errors

#: Suffix of every encrypted file of an export.
AGE_SUFFIX = ".age"
#: Most recipients one export may name (each adds a header stanza to every file).
MAX_RECIPIENTS = 64


def parse_recipients(values: Sequence[str], *, field: str = "age_encryption_recipients") -> list[Any]:
    """pyrage recipient objects for `values`; InvalidInput naming `field[i]` for a key that is not one."""
    if len(values) > MAX_RECIPIENTS:
        raise errors.InvalidInput(f"at most {MAX_RECIPIENTS} recipients, got {len(values)}", field=field)
    out = []
    for i, raw in enumerate(values):
        text = raw.strip() if isinstance(raw, str) else ""
        try:
            if text.startswith("age1"):
                out.append(pyrage.x25519.Recipient.from_str(text))
            elif text.startswith("ssh-"):
                out.append(pyrage.ssh.Recipient.from_str(text))
            else:
                raise pyrage.RecipientError("not an age1 or ssh- key")
        except (pyrage.RecipientError, ValueError) as exc:
            shown = text[:24] + ("..." if len(text) > 24 else "")
            raise errors.InvalidInput(
                f"{shown!r} is not an age recipient ({exc}); give an age1... public key or an SSH public key",
                field=f"{field}[{i}]",
            ) from None
    return out


def encrypt(data: bytes, recipients: Sequence[Any]) -> bytes:
    """`data` encrypted to every recipient (any one of their identities decrypts it)."""
    return pyrage.encrypt(data, list(recipients))
