"""Celery entry points of webhooks, on WEBHOOK_QUEUE: each hands its work to webhooks.delivery.

Senders (webhooks.outbox, beat) name these tasks; code never calls them directly.
"""

from __future__ import annotations

from celery import shared_task

from . import delivery


@shared_task(name="webhooks.tasks.deliver", acks_late=True, ignore_result=True)
def deliver(delivery_id: int) -> str:
    return delivery.deliver(delivery_id)


@shared_task(name="webhooks.tasks.send_due_deliveries", ignore_result=True)
def send_due_deliveries() -> int:
    """Beat: send retries that are due, and what a killed worker or a lost message left behind."""
    return delivery.send_due()
