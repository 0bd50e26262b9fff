"""Twilio's webhooks for conversations: inbound messages and delivery status callbacks."""

from __future__ import annotations

import logging

from crm.conversations import services
from crm.webhooks.handlers import PermanentHandlerError, register
from crm.webhooks.models import WebhookEvent

log = logging.getLogger(__name__)


class MessageNotYetKnown(Exception):
    """A status callback for a SID no message holds yet: retried with backoff.

    Twilio may call back before the send job has committed the SID it was given.
    """


@register("twilio", "messages")
def receive_message(event: WebhookEvent, payload) -> None:
    """Thread an inbound SMS or WhatsApp into its contact's conversation."""
    try:
        message = services.receive_message(payload, received_at=event.received_at)
    except ValueError as exc:
        raise PermanentHandlerError(str(exc)) from exc
    if message is None:
        log.info("inbound message %s was already recorded", payload.get("MessageSid"))


@register("twilio", "status")
def record_status(event: WebhookEvent, payload) -> None:
    """Move a sent message's status forward and record the transition."""
    try:
        message = services.record_status(payload, at=event.received_at)
    except ValueError as exc:
        raise PermanentHandlerError(str(exc)) from exc
    if message is None:
        raise MessageNotYetKnown(f"no message has SID {payload.get('MessageSid')} yet")
