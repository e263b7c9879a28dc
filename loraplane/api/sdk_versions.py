"""Which tinker SDK versions the gateway speaks, and a clear refusal for the others.

Callers: `app.create_app` installs `SdkVersionGate` (a pure ASGI middleware) in front of every
`/api/v1` route but the health check and the signed export files.

Why: the protocol changes between SDK releases (paths, protobuf messages, required fields), so an
SDK this server does not understand would otherwise meet 404s and "malformed protobuf" deep inside
its first call. Every SDK request names its version (`X-Stainless-Package-Version`, also
`X-Sdk-Version` and the `User-Agent`); a version outside `SUPPORTED` gets a 426 at once whose message
names the supported range and what to install. Requests that name no SDK version (curl, download
tools) are not SDK traffic and pass. The range is a setting (`gateway.sdk_versions`), so an operator
who has tested another release can admit it.
"""

from __future__ import annotations

import re

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from starlette.types import ASGIApp, Receive, Scope, Send

from loraplane.api import errors as api_errors
from loraplane.core import errors

#: The SDK releases this gateway is built and tested against.
SUPPORTED = ">=0.38.0,<0.39"
_USER_AGENT = re.compile(r"Tinker/Python\s+(\S+)")
#: Paths any client may call without naming a supported SDK.
_EXEMPT_PREFIXES = ("/api/v1/healthz", "/api/v1/external_weights_files/")


class UnsupportedSdk(errors.UserError):
    """426 Upgrade Required: the SDK speaks a protocol version this server does not."""

    status_code = 426


def parse_range(spec: str) -> SpecifierSet:
    """The configured range; ValueError with a readable message when it is not a PEP 440 specifier."""
    try:
        return SpecifierSet(spec)
    except InvalidSpecifier:
        raise ValueError(f"sdk_versions {spec!r} is not a version range such as '>=0.38.0,<0.39'") from None


def sdk_version(headers: dict[bytes, bytes]) -> str | None:
    """The SDK version a request names, if any. Pure."""
    for name in (b"x-sdk-version", b"x-stainless-package-version"):
        value = headers.get(name)
        if value:
            return value.decode(errors="replace").strip()
    m = _USER_AGENT.search(headers.get(b"user-agent", b"").decode(errors="replace"))
    return m.group(1) if m else None


def refusal(version: str, supported: SpecifierSet) -> UnsupportedSdk | None:
    """The error for an SDK `version` outside `supported`; None when it is inside. Pure."""
    try:
        if Version(version) in supported:
            return None
    except InvalidVersion:
        pass
    lower = [s for s in supported if s.operator in (">=", ">", "==", "~=", "===")]
    shown = ", ".join(str(s) for s in [*lower, *(s for s in supported if s not in lower)])
    lowest = next((s.version for s in lower if s.operator != ">"), None)
    install = f"; install one, e.g. pip install 'tinker=={lowest}'" if lowest else ""
    return UnsupportedSdk(
        f"tinker SDK {version} is not supported by this loraplane server, which speaks the protocol of "
        f"tinker {shown}{install}"
    )


class SdkVersionGate:
    """Pure ASGI middleware: a 426 JSON answer for SDKs outside the supported range."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._parsed: tuple[str, SpecifierSet] = (SUPPORTED, parse_range(SUPPORTED))

    def _supported(self, scope: Scope) -> SpecifierSet:
        """The app's configured range (`app.state.sdk_versions`, set by the CLIs), parsed once."""
        spec = getattr(getattr(scope.get("app"), "state", None), "sdk_versions", None) or SUPPORTED
        if spec != self._parsed[0]:
            self._parsed = (spec, parse_range(spec))
        return self._parsed[1]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not path.startswith("/api/") or path.startswith(_EXEMPT_PREFIXES):
            await self.app(scope, receive, send)
            return
        version = sdk_version(dict(scope.get("headers") or ()))
        error = refusal(version, self._supported(scope)) if version is not None else None
        if error is None:
            await self.app(scope, receive, send)
            return
        await api_errors.response_for(error)(scope, receive, send)
