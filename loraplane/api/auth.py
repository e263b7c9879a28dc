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
import logging
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from loraplane.core import errors, quotas
from loraplane.core.settings import TenantQuota

log = logging.getLogger(__name__)

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
    Tenant settings after the key (`quotas.parse_overrides`) are not read here.
    """
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    tenant, sep, secret = line.partition("=")
    tenant, secret = tenant.strip(), (secret.split() or [""])[0]
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
    """sha256(key) -> tenant, compared in constant time; and the tenants' own settings."""

    entries: list[tuple[bytes, str]] = field(default_factory=list)
    #: tenant -> quota settings from its keys-file line (`quotas.QuotaTable` applies them)
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)

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
    """Build the table from inline `tenant=key` entries and key files.

    Refuses a key given to two tenants (a request with it could act as either); warns about a
    keys file that other users may read or change.
    """
    lines = [(entry, f"api key #{n + 1}") for n, entry in enumerate(inline)]
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                warning = insecure_file_warning(path, os.fstat(f.fileno()).st_mode)
                text = f.read()
        except OSError as exc:
            raise errors.InvalidInput(f"cannot read API keys file {path!r}: {exc.strerror}") from exc
        if warning:
            log.warning("%s", warning)
        lines += [(line, f"{path}:{lineno}") for lineno, line in enumerate(text.splitlines(), 1)]
    entries: list[tuple[str, str, str]] = []  # (tenant, hash, where)
    overrides: dict[str, dict[str, str]] = {}
    for line, where in lines:
        parsed = parse_key_line(line, source=where)
        if parsed:
            entries.append((*parsed, where))
            settings = quotas.parse_overrides(line.split()[1:], source=where)
            if settings:
                overrides.setdefault(parsed[0], {}).update(settings)
    check_unique(entries)
    for tenant, values in overrides.items():
        quotas.resolve(TenantQuota(), values, source=f"tenant {tenant!r}")  # bad values fail at start-up
    table = KeyTable(overrides=overrides)
    for tenant, key_hash, _ in entries:
        table.add(tenant, key_hash)
    return table


def check_unique(entries: list[tuple[str, str, str]]) -> None:
    """Raise InvalidInput when one key belongs to two tenants. Pure; called by `load_keys`."""
    owner: dict[str, tuple[str, str]] = {}
    for tenant, key_hash, where in entries:
        first = owner.setdefault(key_hash, (tenant, where))
        if first[0] != tenant:
            raise errors.InvalidInput(
                f"{where}: the key of tenant {tenant!r} is also the key of tenant {first[0]!r} ({first[1]}); "
                "every tenant needs a key of its own")


def insecure_file_warning(path: str, mode: int) -> str | None:
    """A warning when users other than the owner may read or change the keys file. Pure."""
    if mode & 0o077 == 0:
        return None
    who = "anyone" if mode & 0o007 else "its group"
    return (f"API keys file {path!r} (mode {stat.S_IMODE(mode):o}) can be read or changed by {who}; "
            f"run: chmod 600 {path}")


def split_inline(value: str | None) -> list[str]:
    """`LORAPLANE_GATEWAY__API_KEYS` ("a=tml-1,b=tml-2") -> entries. Pure."""
    return [part for part in (value or "").split(",") if part.strip()]
