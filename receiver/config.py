"""The one settings object, read from the environment once at start and passed down."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any, Literal

import phonenumbers
from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

Network = IPv4Network | IPv6Network

# The shortest callback path token `serve` accepts: 32 characters of secrets.token_urlsafe are
# 192 bits, beyond guessing.
MIN_TOKEN_LENGTH = 32


class ProviderSettings(BaseModel):
    """One provider's account (its API, for sending) and how its callbacks are authenticated: a
    path token, a source allow-list, a signing secret (where the provider signs). With none of
    them its callbacks are refused, unless `allow_unauthenticated` opens them on purpose. From
    the environment as `<PROVIDER>__<FIELD>`, e.g. `CARRIERX__API_KEY`;
    `<PROVIDER>__ALLOWED_IPS` is comma separated."""

    model_config = {"frozen": True, "hide_input_in_errors": True}  # errors print no secrets

    base_url: str | None = None
    api_key: SecretStr | None = None
    account_sid: str | None = None
    property_sid: str | None = None
    callback_token: SecretStr | None = None
    allowed_ips: Annotated[tuple[Network, ...], NoDecode] = ()
    signing_secret: SecretStr | None = None
    allow_unauthenticated: bool = False
    silence_timeout_s: float | None = Field(default=None, gt=0)  # else SILENCE_TIMEOUT_S
    default_region: str | None = None  # ISO 3166 code: where its national numbers are from

    @field_validator("default_region")
    @classmethod
    def known_region(cls, value: str | None) -> str | None:
        if value is None:
            return None
        region = value.strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{value!r} is not an ISO 3166 region with a numbering plan")
        return region

    @field_validator("allowed_ips", mode="before")
    @classmethod
    def split_networks(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(
                ip_network(part.strip(), strict=False) for part in value.split(",") if part.strip()
            )
        return value


# `<PROVIDER>__<FIELD>`: one provider's setting, keyed by the registry's provider name.
_PROVIDER_VARIABLE = re.compile(r"([A-Za-z][A-Za-z0-9]*)__([A-Za-z_]+)")


# A broker a subscription's destination names: `DESTINATIONS__<NAME>__URL` (nats:// or tls:// for
# NATS JetStream, amqp:// or amqps:// for RabbitMQ), its credentials in the URL. Only settings
# hold it: a subscription refers to the name, so no credential reaches the database or the API.
_DESTINATION_VARIABLE = re.compile(r"DESTINATIONS__([A-Za-z0-9][A-Za-z0-9_-]*?)__URL", re.I)
BROKER_SCHEMES = {"nats": "jetstream", "tls": "jetstream", "amqp": "rabbitmq", "amqps": "rabbitmq"}


class DestinationSettings(BaseModel):
    model_config = {"frozen": True, "hide_input_in_errors": True}  # errors print no secrets

    url: SecretStr

    @field_validator("url")
    @classmethod
    def a_broker_url(cls, value: SecretStr) -> SecretStr:
        scheme = value.get_secret_value().split("://", 1)[0].lower()
        if scheme not in BROKER_SCHEMES or "://" not in value.get_secret_value():
            raise ValueError(f"a broker URL: {', '.join(f'{s}://' for s in BROKER_SCHEMES)}")
        return value

    @property
    def kind(self) -> str:
        """The destination kind this broker takes: `jetstream` or `rabbitmq`."""
        return BROKER_SCHEMES[self.url.get_secret_value().split("://", 1)[0].lower()]


class ProviderEnvironment(PydanticBaseSettingsSource):
    """Every `<PROVIDER>__<FIELD>` variable whose field is a ProviderSettings field, gathered
    into `providers` by provider name (lower case), whatever the name: an unknown one is
    reported at start (`Settings.unknown_providers`), not silently ignored."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything is given at once by __call__

    def __call__(self) -> dict[str, Any]:
        found: dict[str, dict[str, str]] = {}
        brokers: dict[str, dict[str, str]] = {}
        for variable, value in os.environ.items():
            broker = _DESTINATION_VARIABLE.fullmatch(variable)
            if broker is not None:
                brokers[broker[1].lower()] = {"url": value}
                continue
            match = _PROVIDER_VARIABLE.fullmatch(variable)
            if match is None or match[2].lower() not in ProviderSettings.model_fields:
                continue
            found.setdefault(match[1].lower(), {})[match[2].lower()] = value
        gathered: dict[str, Any] = {"providers": found} if found else {}
        if brokers:
            gathered["destinations"] = brokers
        return gathered


HMAC_BLOCK = 64  # SHA-256's block size


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,  # a wrong setting must not print the secrets beside it
    )

    database_url: str | None = Field(
        default=None,
        description="Postgres DSN; unset starts the embedded Postgres under EMBEDDED_PG_DIR.",
    )
    embedded_pg_dir: Path = Field(
        default=Path(".data/postgres"), description="Data directory of the embedded Postgres."
    )
    listen_host: str = Field(default="127.0.0.1", description="Address the HTTP server binds.")
    listen_port: int = Field(default=8080, ge=0, le=65535, description="HTTP port.")
    body_limit_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Largest callback body accepted (else 413)."
    )
    max_events_per_callback: int = Field(
        default=10_000,
        ge=1,
        description="More events from one callback are kept unparsed (reprocess has no limit).",
    )
    db_pool_min_size: int = Field(default=1, ge=0, description="Connections kept open.")
    db_pool_max_size: int = Field(default=10, ge=1, description="Most connections at once.")
    ingest_writers: int = Field(
        default=4,
        ge=1,
        description="Most transactions storing callbacks at once: one, and more only while half"
        " a batch waits or one is stuck; callbacks arriving meanwhile are stored together by"
        " the next one (group commit).",
    )
    ingest_pool_size: int = Field(
        default=5,
        ge=1,
        description="Connections of the callback path's own (its writers and the spool's"
        " replay), apart from DB_POOL_MAX_SIZE: API readers can never starve it.",
    )
    ingest_batch_max: int = Field(
        default=100, ge=1, description="Most callbacks stored in one transaction."
    )
    ingest_queue_max: int = Field(
        default=1000,
        ge=1,
        description="Callbacks waiting to be stored beyond which more are answered 503 at once.",
    )
    spool_dir: Path | None = Field(
        default=None,
        description="Where callbacks are kept (fsynced, then acknowledged 202) while Postgres"
        " cannot take them; unset: they are answered 503.",
    )
    spool_max_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1024, description="Largest spool; beyond, 503 again."
    )
    spool_replay_s: float = Field(
        default=2.0, gt=0, description="How often spooled callbacks are stored into Postgres."
    )
    db_acquire_timeout_s: float = Field(
        default=2.0, gt=0, description="Wait for a free connection before answering 503."
    )
    db_command_timeout_s: float = Field(
        default=10.0, gt=0, description="Longest one database call may take before 503."
    )
    db_connect_retry_s: float = Field(
        default=60.0, ge=0, description="How long `serve` waits for the database at start."
    )
    retry_after_s: int = Field(
        default=5, ge=1, description="Retry-After sent with 503 when the database is down."
    )
    http_idle_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="A connection idle, or with a request head still incomplete, for this long"
        " is closed (slow clients cannot hold connections).",
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="A request body not received within this is answered 408."
    )
    shutdown_timeout_s: float = Field(
        default=30.0, ge=0, description="On SIGTERM, how long in-flight requests may finish."
    )
    public_base_url: str = Field(
        default="http://127.0.0.1:8080",
        description="How providers reach this hub: callback URLs given to them start with it.",
    )
    default_provider: str | None = Field(
        default=None, description="Provider of a send request that names none."
    )
    sandbox: bool = Field(
        default=False,
        description="Mount the simulated providers under /sandbox/ and send to them by default.",
    )
    sandbox_delay_s: float = Field(
        default=0.5, ge=0, description="Pause between a simulated provider's reports."
    )
    send_timeout_s: float = Field(
        default=15.0, gt=0, description="Longest wait for a provider's answer to a send."
    )
    send_attempts: int = Field(
        default=3,
        ge=1,
        le=10,
        description="Tries of a provider call where nothing was sent (500/502/503, connection"
        " refused, a safe refusal); never a timeout or a 504.",
    )
    send_allowed_countries: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Comma-separated ISO 3166 codes a message may be sent to (empty: all); a"
        " `to` elsewhere is a 422, against SMS pumping.",
    )
    send_daily_recipients: int = Field(
        default=10_000,
        ge=0,
        description="Recipients per API key (per address without keys) per UTC day, per"
        " instance; beyond, 429 quota_exceeded until midnight UTC. 0: no quota.",
    )
    send_retry_budget_s: float = Field(
        default=10.0,
        ge=0,
        description="How long a send may wait in all for a provider answering 429 (after each"
        " Retry-After); beyond, its recipients are failed (temporary).",
    )
    send_rate_per_s: float = Field(
        default=50.0,
        gt=0,
        description="Send requests per second per API key (per address without keys), sustained;"
        " more are answered 429 with Retry-After.",
    )
    send_burst: int = Field(
        default=100, ge=1, description="Send requests per API key allowed at once above the rate."
    )
    silence_timeout_s: float = Field(
        default=72 * 3600.0,
        gt=0,
        description="A recipient with no final report this long after it was sent (unless its"
        " message has expires_at) is given a synthetic `expired`; per provider"
        " `<PROVIDER>__SILENCE_TIMEOUT_S`.",
    )
    silence_sweep_s: float = Field(
        default=5.0,
        gt=0,
        description="How often the worker (or serve with DISPATCHER) looks for recipients past"
        " their deadline.",
    )
    schedule_poll_s: float = Field(
        default=1.0,
        gt=0,
        description="How often the worker (or serve with DISPATCHER) sends the messages it holds"
        " whose send_at has come (for providers that cannot schedule): at most this late.",
    )
    health_window_s: float = Field(
        default=900.0,
        gt=0,
        le=86400,
        description="Routing: the sliding window of a provider's recent sends its health is"
        " judged on, per destination country.",
    )
    health_slow_s: float = Field(
        default=300.0,
        gt=0,
        description="Routing: a text not delivered this long after it was sent is slow.",
    )
    health_slow_share: float = Field(
        default=0.15,
        gt=0,
        le=1,
        description="Routing: a provider is degraded for a country when at least this share of"
        " its texts there in the window were slow (GOV.UK Notify's rule).",
    )
    health_min_delivery_rate: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Routing: a provider is degraded for a country when its delivery rate"
        " there (delivered among ended) in the window drops below this.",
    )
    health_min_sample: int = Field(
        default=20,
        ge=1,
        description="Routing: the window's rules judge a provider on at least this many texts.",
    )
    health_send_errors: int = Field(
        default=5,
        ge=1,
        description="Routing: this many send errors in a row (provider down, throttled, out of"
        " credit...) open the provider's circuit: degraded at once.",
    )
    health_probe_s: float = Field(
        default=30.0,
        gt=0,
        description="Routing: an open circuit lets one send through (a probe) this often; its"
        " success closes it.",
    )
    health_hold_s: float = Field(
        default=600.0,
        ge=0,
        description="Routing: a provider's health changes by the window's rules at most once"
        " per this time (the circuit breaker opens at once).",
    )
    health_check_s: float = Field(
        default=15.0,
        gt=0,
        description="Routing: how often the worker (or serve with DISPATCHER) judges the"
        " providers' health.",
    )
    fast_delivery_s: float = Field(
        default=2.0,
        ge=0,
        description="/v1/stats counts deliveries reported sooner than this after sending: a"
        " known sign of fake delivery reports (fast_under_s overrides it per request).",
    )
    refusal_rate_per_s: float = Field(
        default=1.0,
        gt=0,
        description="Refused callbacks (authentication failed) per second per source address,"
        " sustained; beyond, its callbacks are answered 429 with Retry-After before their body"
        " is read. Behind a proxy, set TRUSTED_PROXIES: else the proxy is the one source.",
    )
    refusal_burst: int = Field(
        default=30, ge=1, description="Refused callbacks per source address allowed at once."
    )
    refusal_retention_days: int = Field(
        default=30, ge=1, description="How long the record of a refused callback is kept."
    )
    raw_retention_days: int = Field(
        default=30,
        ge=1,
        description="How long raw callbacks (bodies, headers) are kept; dropped by the day.",
    )
    event_retention_days: int = Field(
        default=90,
        ge=1,
        description="How long normalised events are kept; dropped by the month, so up to a"
        " month longer.",
    )
    message_retention_days: int = Field(
        default=90,
        ge=1,
        description="How long sent messages and their recipients (and reports for ids the hub"
        " never sent) are kept; removed in batches.",
    )
    delivery_retention_days: int = Field(
        default=7,
        ge=1,
        description="How long finished webhook deliveries and their attempts are kept.",
    )
    upkeep_interval_s: float = Field(
        default=3600.0,
        gt=0,
        description="How often the worker (or serve with DISPATCHER) makes partitions ahead and"
        " applies the retentions.",
    )
    idempotency_ttl_s: int = Field(
        default=24 * 3600,
        ge=60,
        description="How long an Idempotency-Key's answer is kept (replayed), then purged.",
    )
    idempotency_stale_s: float = Field(
        default=600.0,
        gt=0,
        description="A key whose first request never answered (it died mid-way) is released"
        " after this, instead of answering 409 for ever.",
    )
    webhook_timeout_s: float = Field(
        default=15.0, gt=0, description="Longest wait for a subscriber's answer."
    )
    webhook_retry_delays_s: Annotated[tuple[float, ...], NoDecode] = Field(
        default=(5, 300, 1800, 7200, 18000, 36000, 36000),
        description="Waits before each retry of a delivery (comma separated), with jitter.",
    )
    webhook_lease_s: float = Field(
        default=60.0, gt=0, description="A claimed delivery returns to the queue after this."
    )
    webhook_concurrency: int = Field(default=32, ge=1, description="Deliveries in flight.")
    destination_max_in_flight: int = Field(
        default=64,
        ge=1,
        le=10_000,
        description="Publishes awaiting a broker's acknowledgement, per destination name.",
    )
    webhook_per_subscription: int = Field(
        default=4, ge=1, description="Deliveries in flight to one subscriber."
    )
    webhook_poll_s: float = Field(
        default=2.0, gt=0, description="Dispatcher's polling backstop to LISTEN/NOTIFY."
    )
    webhook_disable_after_s: float = Field(
        default=5 * 86400, gt=0, description="A subscription failing this long is disabled."
    )
    webhook_allowed_networks: Annotated[tuple[Network, ...], NoDecode] = Field(
        default=(),
        description="Private networks subscribers may be in (e.g. 127.0.0.0/8); none by default.",
    )
    reply_window_days: int = Field(
        default=30,
        ge=1,
        le=3650,
        description="A reply to a number no tenant owns is the tenant's that most recently sent"
        " from that number to that handset within this many days; else nobody's (the"
        " operator's).",
    )
    opt_out_secret: SecretStr | None = Field(
        default=None,
        description="The key of the opt-out list's hashes of numbers (HMAC-SHA256): set it in"
        " production, before the first opt-out (unset: a key made by migration 0024 and kept in"
        " the database, where whoever reads the database can use it).",
    )
    opt_out_keywords: str = Field(
        default="STOP,STOPALL,UNSUBSCRIBE,CANCEL,END,QUIT",
        pattern=r"^[A-Za-z0-9 ,]{1,500}$",
        description="A reply whose whole text is one of these (any case, trailing punctuation"
        " left out) opts its handset out.",
    )
    opt_in_keywords: str = Field(
        default="START,UNSTOP",
        pattern=r"^[A-Za-z0-9 ,]{1,500}$",
        description="A reply whose whole text is one of these opts its handset back in.",
    )
    opt_out_all_keywords: str = Field(
        default="STOPALL",
        pattern=r"^[A-Za-z0-9 ,]{1,500}$",
        description="Opt-out keywords that reach the whole tenant, not only the number written to.",
    )
    help_keywords: str = Field(
        default="HELP,INFO",
        pattern=r"^[A-Za-z0-9 ,]{1,500}$",
        description="A reply whose whole text is one of these gets the tenant's help_reply, when"
        " it has one.",
    )
    opt_out_scope: Literal["sender", "tenant"] = Field(
        default="sender",
        description="What an opt-out reaches: the number or sender id the reply went to, or the"
        " whole tenant.",
    )
    streams_per_key: int = Field(
        default=5,
        ge=1,
        description="Event streams (/v1/events/stream) open at once per API key (per address"
        " without keys), per instance; more are answered 429.",
    )
    trusted_proxies: Annotated[tuple[Network, ...], NoDecode] = Field(
        default=(),
        description="Proxies in front of the hub (comma-separated networks): the client is the"
        " right-most X-Forwarded-For hop that is not one of them; none: the TCP peer.",
    )
    api_auth: bool = Field(
        default=True,
        description="Require API keys on /v1 (`make run` turns it off for a laptop).",
    )
    dispatcher: bool = Field(default=True, description="Run the dispatcher inside `serve`.")
    migrate_on_start: bool = Field(
        default=True,
        description="`serve` applies pending migrations at start; false (or `serve"
        " --no-migrate`): it only checks that none is pending, for a role without the right"
        " to change the schema (`sms-receiver migrate` run once by a deploy step).",
    )
    database_read_url: str | None = Field(
        default=None,
        description="A second DSN (a read replica) for the query endpoints (messages, inbound,"
        " raw callbacks, stats); unset: DATABASE_URL.",
    )
    log_level: str = Field(default="info", description="debug, info, warning or error.")
    migrations_dir: Path | None = Field(
        default=None, description="Where the .sql migrations are; found automatically if unset."
    )

    providers: dict[str, ProviderSettings] = Field(
        default_factory=dict,
        description="Each provider's account and callback authentication, by the registry's"
        " provider name, from `<PROVIDER>__<FIELD>` variables.",
    )
    destinations: dict[str, DestinationSettings] = Field(
        default_factory=dict,
        description="Brokers subscriptions may publish to, by name, from"
        " `DESTINATIONS__<NAME>__URL` variables (nats://, tls://, amqp://, amqps://).",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            ProviderEnvironment(settings_cls),
            env_settings,
            dotenv_settings,
            file_secret_settings,
        )

    @field_validator("webhook_retry_delays_s", mode="before")
    @classmethod
    def split_delays(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(float(part) for part in value.split(",") if part.strip())
        return value

    @field_validator("send_allowed_countries", mode="before")
    @classmethod
    def split_countries(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            countries = tuple(str(part).strip().upper() for part in value)
            unknown = [c for c in countries if c not in phonenumbers.SUPPORTED_REGIONS]
            if unknown:
                raise ValueError(f"not ISO 3166 regions with a numbering plan: {unknown}")
            return countries
        return value

    @field_validator("webhook_allowed_networks", "trusted_proxies", mode="before")
    @classmethod
    def split_allowed(cls, value: Any) -> Any:
        return ProviderSettings.split_networks(value)

    @model_validator(mode="after")
    def lease_outlasts_an_attempt(self) -> Settings:
        # A lease shorter than an attempt lets a second dispatcher deliver it again meanwhile.
        if self.webhook_lease_s <= self.webhook_timeout_s + 1:
            raise ValueError("WEBHOOK_LEASE_S must exceed WEBHOOK_TIMEOUT_S + 1")
        return self

    def opt_out_pads(self) -> str | None:
        """HMAC-SHA256's inner and outer pads of OPT_OUT_SECRET (RFC 2104), hex: the database
        session hashes numbers with them (migration 0024's opt_out_pads), never with the key."""
        if self.opt_out_secret is None:
            return None
        key = self.opt_out_secret.get_secret_value().encode()
        if len(key) > HMAC_BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(HMAC_BLOCK, b"\0")
        return (bytes(b ^ 0x36 for b in key) + bytes(b ^ 0x5C for b in key)).hex()

    def provider(self, name: str) -> ProviderSettings:
        return self.providers.get(name) or ProviderSettings()

    def silence_timeout(self, provider: str) -> float:
        """Seconds after sending that a recipient without a final report expires."""
        return self.provider(provider).silence_timeout_s or self.silence_timeout_s

    def regions(self) -> dict[str, str]:
        """Each provider's DEFAULT_REGION, where one is set."""
        return {
            name: config.default_region
            for name, config in self.providers.items()
            if config.default_region is not None
        }

    def short_callback_tokens(self) -> list[str]:
        """Providers whose callback token is shorter than MIN_TOKEN_LENGTH: guessable."""
        return sorted(
            name
            for name, config in self.providers.items()
            if config.callback_token is not None
            and len(config.callback_token.get_secret_value()) < MIN_TOKEN_LENGTH
        )

    def unknown_providers(self, known: Iterable[str]) -> list[str]:
        """Provider names configured (`<NAME>__<FIELD>`) that the registry does not know: a
        typo that would otherwise leave a provider unauthenticated without a word."""
        return sorted(set(self.providers) - set(known))
