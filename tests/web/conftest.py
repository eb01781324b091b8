"""Fixtures more than one web test module uses: the webhook receiver and the webhooks worker."""

from tests.support.webhooks import receiver, webhooks_worker

__all__ = ["receiver", "webhooks_worker"]
