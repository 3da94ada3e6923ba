"""Is a callback really from its provider? The source-address allow-list, the secret token in
the callback path, then the provider's own documented mechanism (a signature, say)."""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

import structlog

from normalizers.base import CallbackRequest, Provider
from receiver.config import ProviderSettings
from receiver.http.clients import parse_address

log = structlog.get_logger("receiver.ingest.auth")


@dataclass(frozen=True, slots=True)
class AuthFailure:
    status: int  # 401 for a missing or wrong credential, 403 for a source not allowed
    reason: str
    code: str = "unauthorized"


NOT_CONFIGURED = AuthFailure(
    401,
    "no authentication is configured for this provider's callbacks",
    "callback_auth_not_configured",
)


def authenticate(
    provider: Provider,
    config: ProviderSettings,
    request: CallbackRequest,
    *,
    token: str | None,
    remote: str | None,
    now: datetime,
) -> AuthFailure | None:
    """None when the callback may be processed, else why not. A provider with nothing
    configured is refused, unless opened on purpose (`allow_unauthenticated`)."""
    if not is_authenticated(provider, config) and not config.allow_unauthenticated:
        return NOT_CONFIGURED
    if config.allowed_ips and not _allowed(remote, config):
        return AuthFailure(403, f"source address {remote} is not allowed for {provider.name}")
    if config.callback_token is not None:
        expected = config.callback_token.get_secret_value().encode()
        if token is None or not hmac.compare_digest(token.encode(), expected):
            return AuthFailure(401, "missing or wrong callback token")
    secret = config.signing_secret.get_secret_value() if config.signing_secret else None
    try:
        authentic = provider.verify_callback(request, secret, now)
    except Exception:
        log.exception("verify_callback_crashed", provider=provider.name)
        authentic = False
    if not authentic:
        return AuthFailure(401, "the provider's signature check failed")
    return None


def is_authenticated(provider: Provider, config: ProviderSettings) -> bool:
    """Whether anything checks who sent the provider's callbacks: a path token, an allow-list,
    or a signing secret the provider signs with (elsewhere a secret proves nothing)."""
    signed = config.signing_secret is not None and provider.signs_callbacks
    return bool(config.allowed_ips or config.callback_token or signed)


def _allowed(remote: str | None, config: ProviderSettings) -> bool:
    address = parse_address(remote)  # `::ffff:a.b.c.d` is a.b.c.d, as IPv4 allow-lists mean
    return address is not None and any(address in network for network in config.allowed_ips)


# How long a signed callback's key is remembered: longer than any provider's tolerance of a
# signature's age (23 Telecom: 5 minutes), after which the signature itself is refused as stale.
REPLAY_WINDOW_S = 600.0
# Keys remembered at most (the oldest forgotten first): memory stays bounded whatever arrives.
MAX_REPLAY_KEYS = 100_000


class ReplayGuard:
    """The signed callbacks this instance has stored recently, by (provider, replay key): the
    same signed request again is refused. Remembered only once stored, so that a provider's
    retry of a callback answered 503 is not taken for a replay."""

    def __init__(self) -> None:
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    def seen(self, provider: str, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self._forget_before(now)
        return (provider, key) in self._seen

    def remember(self, provider: str, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._seen[(provider, key)] = now + REPLAY_WINDOW_S
        self._seen.move_to_end((provider, key))
        while len(self._seen) > MAX_REPLAY_KEYS:
            self._seen.popitem(last=False)

    def _forget_before(self, now: float) -> None:
        while self._seen:
            oldest, until = next(iter(self._seen.items()))
            if until > now:
                return
            del self._seen[oldest]


def replay_of(provider: Provider, config: ProviderSettings, request: CallbackRequest) -> str | None:
    """The replay key of a callback whose signature was checked (a signing secret is set), if
    its provider signs with a time; None otherwise (nothing to guard)."""
    if config.signing_secret is None:
        return None
    return provider.replay_key(request)
