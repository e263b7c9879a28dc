"""API keys -> tenants.

Callers: the gateway's `deps.tenant` dependency (every /api/v1 route but the health check) and
`loraplane serve` / `loraplane gateway`, which build the key table at start-up.

Keys come from a file of `tenant=key` or `tenant=sha256:<hex>` lines (`#` comments allowed) and
from inline `tenant=key` pairs (comma-separated, for development). Only SHA-256 hashes are kept in
memory; a presented key is hashed and compared with every stored hash in constant time, so neither
the keys nor their position in the table leak through timing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from loraplane.core import errors

#: Tenants become Kubernetes label values and store folder names: keep them DNS-label-safe.
TENANT_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
HASH_RE = re.compile(r"^sha256:([0-9a-f]{64})$")
#: What the SDK accepts client-side (tinker-protocol surprise 11).
KEY_PREFIXES = ("tml-", "eyJ")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_key_line(line: str, *, source: str) -> tuple[str, str] | None:
    """One `tenant=key` / `tenant=sha256:<hex>` entry -> (tenant, sha256 hex); None for blanks and comments.

    Pure; called by `load_keys`. Raises InvalidInput that names the source and the problem.
    """
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    tenant, sep, secret = line.partition("=")
    tenant, secret = tenant.strip(), secret.strip()
    if not sep or not secret:
        raise errors.InvalidInput(f"{source}: expected 'tenant=key' or 'tenant=sha256:<hex>', got {line[:40]!r}")
    if not TENANT_RE.match(tenant):
        raise errors.InvalidInput(
            f"{source}: tenant {tenant!r} must be lowercase letters, digits and '-' (at most 63)", field="tenant"
        )
    m = HASH_RE.match(secret)
    if m:
        return tenant, m.group(1)
    if not secret.startswith(KEY_PREFIXES):
        raise errors.InvalidInput(
            f"{source}: the key of tenant {tenant!r} must start with 'tml-' (the Tinker SDK refuses others)"
        )
    return tenant, hash_key(secret)


@dataclass
class KeyTable:
    """sha256(key) -> tenant, compared in constant time."""

    entries: list[tuple[bytes, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, tenant: str, key_hash_hex: str) -> None:
        self.entries.append((bytes.fromhex(key_hash_hex), tenant))

    def tenant_for(self, key: str | None) -> str:
        """The tenant of `key`; raises Unauthenticated (401) for a missing or unknown key."""
        if not key:
            raise errors.Unauthenticated("missing API key: send it in the X-API-Key header")
        presented = hashlib.sha256(key.encode()).digest()
        found: str | None = None
        for stored, tenant in self.entries:
            if hmac.compare_digest(stored, presented) and found is None:
                found = tenant
        if found is None:
            raise errors.Unauthenticated("unknown API key")
        return found


def load_keys(*, inline: Iterable[str] = (), files: Iterable[str] = ()) -> KeyTable:
    """Build the table from inline `tenant=key` entries and key files."""
    table = KeyTable()
    for n, entry in enumerate(inline):
        parsed = parse_key_line(entry, source=f"api key #{n + 1}")
        if parsed:
            table.add(*parsed)
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as exc:
            raise errors.InvalidInput(f"cannot read API keys file {path!r}: {exc.strerror}") from exc
        for lineno, line in enumerate(lines, 1):
            parsed = parse_key_line(line, source=f"{path}:{lineno}")
            if parsed:
                table.add(*parsed)
    return table


def split_inline(value: str | None) -> list[str]:
    """`LORAPLANE_GATEWAY__API_KEYS` ("a=tml-1,b=tml-2") -> entries. Pure."""
    return [part for part in (value or "").split(",") if part.strip()]
