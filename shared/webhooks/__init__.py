"""Signed webhooks: a POST to the job's `webhook` URL when the job ends, per Standard Webhooks.

- urls.py: what a submit may name (`check_webhook_url`, `webhook_for_submit`) and where a delivery
  may go (`resolve_webhook`: SSRF checks, the addresses the request is pinned to);
- secrets.py: the owners' `whsec_` signing secrets;
- outbox.py: `Outbox`, the job store's notifier: one message per ended job and event, once;
- delivery.py: one signed attempt (`deliver`) and the retry schedule (`retry_delay`);
- worker.py: the light Celery worker that runs the deliveries (imported only by `celery -A`).

Nothing here imports Flask, torch or the worker package.
"""

from shared.webhooks.delivery import build_request, deliver, post, retry_delay
from shared.webhooks.outbox import DELIVER_TASK, EVENTS, WEBHOOK_QUEUE, Outbox, delivery_key, webhook_id
from shared.webhooks.secrets import forget_secret, new_secret, owner_secret, rotate_secret, signing_secret
from shared.webhooks.urls import (
    MAX_URL_LENGTH,
    DeliveryError,
    InvalidWebhook,
    Target,
    check_webhook_url,
    resolve_webhook,
    webhook_for_submit,
)

__all__ = [
    "DELIVER_TASK",
    "EVENTS",
    "MAX_URL_LENGTH",
    "WEBHOOK_QUEUE",
    "DeliveryError",
    "InvalidWebhook",
    "Outbox",
    "Target",
    "build_request",
    "check_webhook_url",
    "deliver",
    "delivery_key",
    "new_secret",
    "owner_secret",
    "rotate_secret",
    "forget_secret",
    "post",
    "resolve_webhook",
    "retry_delay",
    "signing_secret",
    "webhook_for_submit",
    "webhook_id",
]
