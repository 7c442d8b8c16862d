"""Medplum rest-hook Subscriptions generated from the handlers' declarations, and their sync.

One Subscription per handler that declares one (every bot, the clinician-decision loop), so
Medplum does
the routing and retries and health are per handler. Each one is identified by a ``meta.tag``
(``<NAMESPACE>/CodeSystem/subscription|<handler>``; R4 Subscriptions have no identifier), which
makes :func:`sync_subscriptions` idempotent.

Every Subscription carries Medplum's extensions explicitly (medplum-facts §1):

* one ``subscription-supported-interaction`` per interaction (none at all would mean create,
  update *and* delete);
* ``subscription-max-attempts`` (``Settings.subscription_max_attempts``);
* ``fhir-path-criteria-expression``: the bot's own condition, if any, AND the exclusion of the
  service's own writes, ``%current.meta.author.where(reference = 'ClientApplication/<id>')
  .empty()``. It is true when ``meta.author`` is absent, and for a delete (Medplum evaluates a
  delete against the last stored version, whose author is whoever wrote it last; ``%current``
  being ``{}`` or empty would also give true);
* the signing secret ``https://www.medplum.com/...subscription-secret`` (note ``www.``), only
  when syncing: the committed files under ``subscriptions/`` never hold a secret.

The committed files are generated from the default settings, so they do not depend on the
machine; ``sync`` fills in the deployment's receiver URL, client id, max attempts and secret.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

from app.botkit.handler import BotHandler
from app.botkit.identifiers import BOT_DEVICE_SYSTEM, IDENTIFIER_BASE
from app.botkit.resources import bot_device
from app.events.signature import subscription_secret
from app.fhir.resource_json import FHIR_ID, JSONObject, JSONValue, get_objects, get_str
from app.handlers.protocol import Interaction
from app.handlers.registry import HANDLER_NAME
from app.observability.logging import get_logger
from app.settings import ENV_PREFIX, ConfigurationError, Settings

if TYPE_CHECKING:
    from collections.abc import Sequence

    from app.botkit.declaration import BotDeclaration
    from app.handlers.protocol import Subscribes, Trigger
    from app.handlers.registry import HandlerRegistry
    from app.integrations.medplum import MedplumClient

SUBSCRIPTION_TAG_SYSTEM = f"{IDENTIFIER_BASE}/CodeSystem/subscription"
SUPPORTED_INTERACTION_URL = (
    "https://medplum.com/fhir/StructureDefinition/subscription-supported-interaction"
)
MAX_ATTEMPTS_URL = "https://medplum.com/fhir/StructureDefinition/subscription-max-attempts"
FHIRPATH_CRITERIA_URL = "https://medplum.com/fhir/StructureDefinition/fhir-path-criteria-expression"
# Medplum reads the secret from this URL, with "www." unlike the other extensions.
SECRET_URL = "https://www.medplum.com/fhir/StructureDefinition/subscription-secret"  # noqa: S105
FHIR_JSON = "application/fhir+json"
# The channel header that names the handler ("X-Starvit-Bot: bmi"), read by the receiver
# (app.events.keys.HANDLER_HEADER is its lower-case form).
BOT_HEADER_NAME = "X-Starvit-Bot"
# Where `starvit subscriptions generate` writes (and the drift test reads) the definitions.
SUBSCRIPTIONS_DIR = Path(__file__).resolve().parents[2] / "subscriptions"
# One search page holds every handler's Subscription (and any duplicates of them).
_SEARCH_COUNT = 100

# The elements sync manages: any difference in these is drift. Other elements (and all of
# `meta`, `id`) are the server's or nobody's business here. `error` and `end` are never
# generated, so their presence on the server is drift too.
_MANAGED = ("resourceType", "status", "reason", "criteria", "channel", "extension", "error", "end")

type SyncAction = Literal["created", "updated", "reenabled", "unchanged"]
type HealthStatus = Literal["active", "off", "error", "requested", "missing"]

_log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Subscribed:
    """A handler that has a Subscription: its name and what it subscribes to."""

    name: str
    subscription: Subscribes


@dataclass(frozen=True, slots=True)
class SyncResult:
    handler: str
    subscription_id: str
    action: SyncAction


@dataclass(frozen=True, slots=True)
class SubscriptionHealth:
    """The state of one handler's Subscription. Deliberately without ``Subscription.error``'s
    text (it can quote a server message): only whether there is one."""

    handler: str
    subscription_id: str | None
    status: HealthStatus
    error_text_present: bool
    warning: str | None = None  # delivers less than it lists on some Medplum versions

    @property
    def healthy(self) -> bool:
        return self.status == "active" and self.warning is None


# ------------------------------------------------------------------------- handlers


def subscribed_handlers(registry: HandlerRegistry | None = None) -> list[Subscribed]:
    """Every handler of ``registry`` (by default the service's own) that has a Subscription."""
    if registry is None:
        from app.wiring import handler_registry  # noqa: PLC0415 - the composition root

        registry = handler_registry()
    found: list[Subscribed] = []
    for handler in registry.subscribed():
        assert handler.subscription is not None
        found.append(Subscribed(handler.name, handler.subscription))
    return found


def bot_declarations(registry: HandlerRegistry | None = None) -> list[BotDeclaration]:
    if registry is None:
        from app.wiring import handler_registry  # noqa: PLC0415 - the composition root

        registry = handler_registry()
    return [h.bot.declaration for h in registry if isinstance(h, BotHandler)]


# ------------------------------------------------------------------------- builders


def own_write_exclusion(service_client_id: str) -> str:
    """FHIRPath that is true unless ``%current`` was written by the service's client."""
    if not FHIR_ID.match(service_client_id):
        raise ValueError("the service client id is not a Medplum ClientApplication id")
    reference = f"ClientApplication/{service_client_id}"
    return f"%current.meta.author.where(reference = '{reference}').empty()"


def fhirpath_criteria(trigger: Trigger, service_client_id: str) -> str:
    exclusion = own_write_exclusion(service_client_id)
    own = (trigger.fhirpath or "").strip()
    return f"({own}) and ({exclusion})" if own else exclusion


def subscription_tag(handler_name: str) -> JSONObject:
    return {"system": SUBSCRIPTION_TAG_SYSTEM, "code": handler_name}


def supported_interactions(trigger: Trigger) -> tuple[Interaction, ...]:
    """The trigger's interactions, if every Medplum version can deliver exactly those: one of
    them, or all three. ``ValueError`` otherwise."""
    interactions = tuple(dict.fromkeys(trigger.interactions))
    if len(interactions) not in (1, len(Interaction)):
        raise ValueError(
            "a trigger subscribes to one interaction or to all three: Medplum 5.0 reads only "
            "the first supported-interaction extension"
        )
    return interactions


def interaction_warning(subscription: JSONObject) -> str | None:
    """Why a Subscription on the server may not deliver what it lists, or ``None``."""
    listed = [
        get_str(extension, "valueCode")
        for extension in get_objects(subscription, "extension")
        if get_str(extension, "url") == SUPPORTED_INTERACTION_URL
    ]
    if len(listed) > 1:
        return (
            f"lists {len(listed)} supported interactions: Medplum 5.0 reads only the first "
            f"({listed[0]}); run `starvit subscriptions sync`"
        )
    return None


def build_subscription(
    handler_name: str,
    trigger: Trigger,
    *,
    reason: str,
    receiver_url: str,
    service_client_id: str,
    max_attempts: int,
    secret: str | None = None,
) -> JSONObject:
    """The FHIR R4 Subscription of one handler (a rest-hook to ``receiver_url``)."""
    if not HANDLER_NAME.match(handler_name):
        raise ValueError("a handler name is lower-case letters, digits and '-'")
    interactions = supported_interactions(trigger)
    resource_type = trigger.criteria.split("?", 1)[0]
    if resource_type != trigger.resource_type:
        raise ValueError("the trigger's criteria must search its resource type")
    if not 1 <= max_attempts <= 19:
        raise ValueError("Medplum caps subscription-max-attempts at 19")
    if secret is not None and not secret:
        raise ValueError("an empty secret would sign nothing")

    # Medplum 5.0 reads only the first supported-interaction extension, and no extension means
    # create, update and delete on every version: so one interaction gets one extension, all
    # three get none, and two cannot be expressed (refused above).
    extension: list[JSONValue] = [
        {"url": SUPPORTED_INTERACTION_URL, "valueCode": interaction.value}
        for interaction in interactions
        if len(interactions) == 1
    ]
    extension.append({"url": MAX_ATTEMPTS_URL, "valueInteger": max_attempts})
    extension.append(
        {"url": FHIRPATH_CRITERIA_URL, "valueString": fhirpath_criteria(trigger, service_client_id)}
    )
    if secret is not None:
        extension.append({"url": SECRET_URL, "valueString": secret})
    return {
        "resourceType": "Subscription",
        "meta": {"tag": [subscription_tag(handler_name)]},
        "status": "active",
        "reason": reason,
        "criteria": trigger.criteria,
        "channel": {
            "type": "rest-hook",
            "endpoint": receiver_url,
            "payload": FHIR_JSON,
            "header": [f"{BOT_HEADER_NAME}: {handler_name}"],
        },
        "extension": extension,
    }


def _subscription_for(handler: Subscribed, settings: Settings, secret: str | None) -> JSONObject:
    return build_subscription(
        handler.name,
        handler.subscription.trigger,
        reason=handler.subscription.reason,
        receiver_url=settings.receiver_url,
        service_client_id=settings.medplum_client_id,
        max_attempts=settings.subscription_max_attempts,
        secret=secret,
    )


def generate(settings: Settings, registry: HandlerRegistry | None = None) -> dict[str, JSONObject]:
    """Every handler's Subscription, without a secret, by handler name."""
    return {
        handler.name: _subscription_for(handler, settings, None)
        for handler in subscribed_handlers(registry)
    }


# ------------------------------------------------------------------------- committed files


def default_settings() -> Settings:
    """Settings with every field at its default, whatever the environment and ``.env`` say:
    the committed files must be the same on every machine."""
    return Settings.model_construct()


def render(subscription: JSONObject) -> str:
    return json.dumps(subscription, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def expected_files() -> dict[str, str]:
    """File name -> content of ``subscriptions/*.json``."""
    return {
        f"{name}.json": render(subscription)
        for name, subscription in generate(default_settings()).items()
    }


def stale_files(directory: Path = SUBSCRIPTIONS_DIR) -> list[str]:
    """The ``*.json`` files that are missing, differ, or belong to no handler any more."""
    expected = expected_files()
    stale: list[str] = []
    for name, content in expected.items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != content:
            stale.append(name)
    if directory.is_dir():
        stale.extend(p.name for p in directory.glob("*.json") if p.name not in expected)
    return sorted(stale)


def write_files(directory: Path = SUBSCRIPTIONS_DIR) -> list[str]:
    """Bring ``directory`` up to date; returns the names written or removed."""
    directory.mkdir(parents=True, exist_ok=True)
    changed = stale_files(directory)
    expected = expected_files()
    for name in changed:
        path = directory / name
        if name in expected:
            path.write_text(expected[name], encoding="utf-8")
        else:
            path.unlink()
    return changed


# ------------------------------------------------------------------------- sync and health


def _tag_query(handlers: Sequence[Subscribed]) -> dict[str, str]:
    values = ",".join(f"{SUBSCRIPTION_TAG_SYSTEM}|{handler.name}" for handler in handlers)
    return {"_tag": values, "_count": str(_SEARCH_COUNT)}


def _handler_of(subscription: JSONObject) -> str | None:
    meta = subscription.get("meta")
    if not isinstance(meta, dict):
        return None
    for tag in get_objects(cast("JSONObject", meta), "tag"):
        if get_str(tag, "system") == SUBSCRIPTION_TAG_SYSTEM:
            return get_str(tag, "code")
    return None


async def _existing(
    medplum: MedplumClient, handlers: Sequence[Subscribed]
) -> dict[str, JSONObject]:
    """The current Subscription of each handler that has one."""
    result = await medplum.search("Subscription", _tag_query(handlers))
    found: dict[str, list[JSONObject]] = {}
    for subscription in result.resources:
        name = _handler_of(subscription)
        if name is not None and get_str(subscription, "id"):
            found.setdefault(name, []).append(subscription)
    chosen: dict[str, JSONObject] = {}
    for name, candidates in found.items():
        if len(candidates) > 1:
            # Two Subscriptions for one handler deliver every event twice (the receiver
            # deduplicates); sync manages the first and an admin should delete the rest.
            _log.warning("subscription_duplicates", handler=name, count=len(candidates))
        candidates.sort(key=lambda s: (get_str(s, "status") != "active", get_str(s, "id") or ""))
        chosen[name] = candidates[0]
    return chosen


def _managed(subscription: JSONObject) -> dict[str, JSONValue]:
    return {key: subscription[key] for key in _MANAGED if key in subscription}


def _replacement(existing: JSONObject, desired: JSONObject) -> JSONObject:
    """``desired`` with the existing id, keeping any other tags the existing one carries."""
    tags: list[JSONValue] = list(get_objects(cast("JSONObject", existing.get("meta") or {}), "tag"))
    for tag in get_objects(cast("JSONObject", desired["meta"]), "tag"):
        if tag not in tags:
            tags.append(tag)
    body: JSONObject = {key: value for key, value in desired.items() if key != "meta"}
    body["id"] = existing["id"]
    body["meta"] = {"tag": tags}
    return body


async def ensure_bot_devices(
    medplum: MedplumClient, registry: HandlerRegistry | None = None
) -> None:
    """The Device each bot version is recorded as (Provenance agents point at it)."""
    for declaration in bot_declarations(registry):
        await medplum.create(
            bot_device(declaration),
            if_none_exist=(
                f"identifier={BOT_DEVICE_SYSTEM}|{declaration.name}@{declaration.version}"
            ),
        )


def check_sync_settings(settings: Settings) -> None:
    """Raise :class:`ConfigurationError` (naming the variable) unless ``settings`` can sync."""
    settings.require_webhook_secrets()
    if not FHIR_ID.match(settings.medplum_client_id):
        raise ConfigurationError(
            f"{ENV_PREFIX}MEDPLUM_CLIENT_ID: must be the service's ClientApplication id "
            "(letters, digits, '-' and '.')"
        )
    if settings.environment == "production" and not settings.receiver_url.startswith("https://"):
        # Notifications carry PHI; Medplum servers from mid-2026 refuse http:// endpoints
        # anyway unless allowInsecureRestHookUrl is on.
        raise ConfigurationError(f"{ENV_PREFIX}RECEIVER_URL: must be https:// in production")


async def sync_subscriptions(
    medplum: MedplumClient, settings: Settings, registry: HandlerRegistry | None = None
) -> list[SyncResult]:
    """Create or correct every handler's Subscription (and the bots' Devices) in the project.

    Each Subscription's signing secret is derived from the first of
    ``settings.webhook_secrets`` and the handler's name (:func:`subscription_secret`; the
    receiver accepts the derivations of them all, so rotation is: prepend the new one, deploy,
    sync, later drop the old one). Running it twice changes nothing the second time.
    """
    check_sync_settings(settings)
    configured = settings.webhook_secrets[0].get_secret_value()
    handlers = subscribed_handlers(registry)
    await ensure_bot_devices(medplum, registry)
    existing = await _existing(medplum, handlers)
    results: list[SyncResult] = []
    for handler in handlers:
        # Each Subscription signs with its own secret, so a signature proves the handler.
        secret = subscription_secret(configured, handler.name)
        desired = _subscription_for(handler, settings, secret)
        current = existing.get(handler.name)
        if current is None:
            created = await medplum.create(
                desired, if_none_exist=f"_tag={SUBSCRIPTION_TAG_SYSTEM}|{handler.name}"
            )
            if created.created:
                results.append(SyncResult(handler.name, created.id or "", "created"))
                continue
            current = created.resource  # another sync made it meanwhile: check it below
        subscription_id = get_str(current, "id") or ""
        status = get_str(current, "status")
        if _managed(current) == _managed(desired):
            results.append(SyncResult(handler.name, subscription_id, "unchanged"))
            continue
        action: SyncAction = "reenabled" if status in ("off", "error") else "updated"
        version = get_str(cast("JSONObject", current.get("meta") or {}), "versionId")
        await medplum.update(_replacement(current, desired), if_match_version=version)
        results.append(SyncResult(handler.name, subscription_id, action))
    return results


def _health_status(value: str | None) -> HealthStatus:
    if value in ("active", "off", "error", "requested"):
        return cast("HealthStatus", value)
    # Anything else (entered-in-error, absent) does not deliver: report it as an error.
    return "error"


async def subscription_health(
    medplum: MedplumClient, registry: HandlerRegistry | None = None
) -> list[SubscriptionHealth]:
    """The status of every handler's Subscription, ``missing`` when there is none."""
    handlers = subscribed_handlers(registry)
    existing = await _existing(medplum, handlers)
    report: list[SubscriptionHealth] = []
    for handler in handlers:
        current = existing.get(handler.name)
        if current is None:
            report.append(SubscriptionHealth(handler.name, None, "missing", False))
            continue
        error = current.get("error")
        report.append(
            SubscriptionHealth(
                handler=handler.name,
                subscription_id=get_str(current, "id"),
                status=_health_status(get_str(current, "status")),
                error_text_present=isinstance(error, str) and bool(error.strip()),
                warning=interaction_warning(current),
            )
        )
    return report
