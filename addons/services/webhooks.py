"""An account's webhooks: URLs that receive its billing events, each signed with the webhook's own secret
(the delivery is addons/billing/event_delivery.py).

The secret (`whsec_...`) is shown once, in the creation's answer, and kept sealed, not hashed: Tollgate
signs every delivery with it (addons/core/sealed_secrets.py). Deleting is soft: the row stays, the
webhook receives nothing more and is no longer found.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from addons.core.sealed_secrets import seal, unseal
from addons.ledger.models import Account, WebhookRow, utcnow
from addons.services import wallets
from addons.services.errors import BadRequest, NotFound
from addons.services.idempotency import run_once
from addons.services.listing import Listing

SECRET_PREFIX = "whsec_"
MAX_URL_LENGTH = 2048


@dataclass(frozen=True, slots=True)
class WebhookInfo:
    id: str
    name: str
    url: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class CreatedWebhook:
    webhook: WebhookInfo
    secret: str  # whsec_...: shown in the creation's answer only


def url_problem(url: str) -> str | None:
    """Why `url` cannot receive webhooks, or None: an absolute http(s) URL with a host, and no credentials in
    it (the URL is shown in every answer; a receiver checks the signature instead)."""
    if len(url) > MAX_URL_LENGTH:
        return f"must be at most {MAX_URL_LENGTH} characters"
    if not url.isprintable() or any(c.isspace() for c in url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port out of range
    except ValueError:
        return "is not a valid URL"
    if parts.scheme.lower() not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials (user:password@): receivers check the signature instead"
    return None


def _checked_url(url: str) -> str:
    problem = url_problem(url)
    if problem:
        raise BadRequest("invalid_webhook_url", f"url {problem}")
    return url


def _checked_name(name: str) -> str:
    if not name.strip():
        raise BadRequest("invalid_webhook_name", "a webhook's name must not be empty")
    return name


def _info(row: WebhookRow) -> WebhookInfo:
    return WebhookInfo(row.id, row.name, row.url, row.created_at)


def _active(account: str):
    return (WebhookRow.select().join(Account)
            .where(Account.name == account, WebhookRow.deleted_at.is_null()))


def _get(account: str, webhook_id: str) -> WebhookRow:
    """The account's webhook; another account's is as unknown as a missing one."""
    row = _active(account).where(WebhookRow.id == webhook_id).first()
    if row is None:
        raise NotFound("webhook_not_found", f"no webhook {webhook_id}")
    return row


def create(account: str, name: str, url: str) -> CreatedWebhook:
    """A new webhook of `account`, with a new signing secret."""
    account_id = wallets.account_id(account)
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    row = WebhookRow.create(account=account_id, name=_checked_name(name), url=_checked_url(url),
                            sealed_secret=seal(secret))
    return CreatedWebhook(_info(row), secret)


def create_once(account: str, name: str, url: str, *, account_id: str, idempotency_key: str,
                request_hash: str) -> CreatedWebhook:
    """`create` under an Idempotency-Key (services.idempotency): a repeat returns the first webhook with its
    secret. The idempotency table keeps only the webhook's id, never the secret; a repeat reads the secret
    back from the webhook's sealed copy."""
    def work() -> tuple[int, dict]:
        return 201, {"webhook_id": create(account, name, url).webhook.id}

    _, answer = run_once(account_id, idempotency_key, request_hash, work)
    row = WebhookRow.get_by_id(answer["webhook_id"])  # a repeat after a delete still gets the first answer
    return CreatedWebhook(_info(row), unseal(row.sealed_secret))


def listing(account: str) -> Listing:
    return Listing(_active(account), WebhookRow.created_at, WebhookRow.id, _info)


def list_webhooks(account: str) -> list[WebhookInfo]:
    return [_info(row) for row in _active(account).order_by(WebhookRow.created_at, WebhookRow.id)]


def get(account: str, webhook_id: str) -> WebhookInfo:
    return _info(_get(account, webhook_id))


def update(account: str, webhook_id: str, *, name: str | None = None, url: str | None = None) -> WebhookInfo:
    """Rename or move a webhook; its secret stays. Events from then on go to the new URL."""
    row = _get(account, webhook_id)
    if name is not None:
        row.name = _checked_name(name)
    if url is not None:
        row.url = _checked_url(url)
    row.save()
    return _info(row)


def delete(account: str, webhook_id: str) -> str:
    """Soft delete: the webhook receives nothing more (retries of earlier events included)."""
    row = _get(account, webhook_id)
    WebhookRow.update(deleted_at=utcnow()).where(WebhookRow.id == row.id, WebhookRow.deleted_at.is_null()).execute()
    return row.id
