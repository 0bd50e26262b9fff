"""Conversations: threading, sending, delivery status, consent and the WhatsApp window.

Services flush, never commit; the view or job that calls them commits once. Sending
only queues: `jobs.messaging.send_message` talks to Twilio after the commit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from flask import current_app, has_request_context, url_for
from sqlalchemy.exc import IntegrityError

from crm.contacts.models import Contact
from crm.conversations.models import (
    CANCELED,
    CHANNEL_LABELS,
    FAILURES,
    ConsentEvent,
    Conversation,
    Message,
    MessageStatusEvent,
    MessageTemplate,
    OptOut,
    advances,
)
from crm.database import utcnow
from crm.extensions import db
from crm.users.models import User

OPT_OUT_WORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
)
OPT_IN_WORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_WORDS = frozenset({"HELP", "INFO"})
PREVIEW = 200

# Twilio error codes, in words a coach understands (reference section 1.4).
ERROR_REASONS = {
    20003: "Twilio refused our credentials.",
    20429: "Twilio was busy; the message will be retried.",
    21211: "The phone number is not valid.",
    21408: "Sending to this country is not enabled on the Twilio account.",
    21606: "Our number cannot send SMS.",
    21608: "The number is not verified on this trial account.",
    21610: "The recipient has unsubscribed (replied STOP).",
    21611: "Our number's send queue is full; try again later.",
    21612: "The number cannot be reached by SMS.",
    21614: "The number is not a mobile number.",
    21635: "The number is a landline.",
    30001: "Twilio's queue overflowed.",
    30003: "The phone is unreachable (switched off or out of coverage).",
    30005: "The number does not exist.",
    30006: "The number is a landline or its carrier cannot be reached.",
    30007: "The carrier filtered the message as spam.",
    30008: "Delivery failed for an unknown reason.",
    63014: "The recipient blocked our WhatsApp number.",
    63016: "Outside the WhatsApp 24-hour window: only an approved template can be sent.",
    63018: "WhatsApp's messaging limit for our number was exceeded.",
    63024: "This number is not on WhatsApp.",
}


class SendRefused(Exception):
    """A message cannot be sent; the reason is shown to the person who tried."""


class Refused(Exception):
    """A change to a conversation that cannot be made; the reason is shown as is."""


def error_reason(code: int | None, fallback: str | None = None) -> str:
    """The human-readable reason for a Twilio error code."""
    if code in ERROR_REASONS:
        return ERROR_REASONS[code]
    if fallback:
        return fallback
    return f"Twilio error {code}." if code else "Sending failed."


# --- addresses and contacts -------------------------------------------------------


def parse_address(address: str) -> tuple[str, str]:
    """(channel, E.164 number) of a Twilio address: `whatsapp:+1…` or `+1…`."""
    address = (address or "").strip()
    if address.startswith("whatsapp:"):
        return "whatsapp", address.removeprefix("whatsapp:")
    return "sms", address


def address_of(channel: str, phone: str) -> str:
    """The Twilio address of `phone` on `channel`."""
    return f"whatsapp:{phone}" if channel == "whatsapp" else phone


def _lock_phone(phone: str) -> None:
    """Serialize work on one phone number until commit, so two deliveries from a new
    number create one contact. SQLite serializes writers already (the webhook job writes
    before it reads); PostgreSQL takes a transaction-scoped advisory lock."""
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": phone})


def find_or_create_contact(phone: str, *, profile_name: str | None = None) -> Contact:
    """The live contact with this E.164 phone, created when there is none.

    A WhatsApp profile name becomes the name only while the name is still just a number.
    """
    _lock_phone(phone)
    contact = db.session.scalars(
        sa.select(Contact)
        .where(Contact.phone == phone, Contact.deleted_at.is_(None))
        .order_by(Contact.id)
        .limit(1)
    ).first()
    if contact is None:
        contact = Contact(name=profile_name or phone, phone=phone)
        db.session.add(contact)
        db.session.flush()
    elif profile_name and _is_just_a_number(contact.name, phone):
        contact.name = profile_name
    return contact


def _is_just_a_number(name: str, phone: str) -> bool:
    digits = re.sub(r"\D", "", name or "")
    return not name.strip() or (bool(digits) and digits == re.sub(r"\D", "", phone))


def open_conversation(contact: Contact, channel: str, *, sender: str | None = None) -> Conversation:
    """The contact's open conversation on `channel`, opened when there is none."""
    conversation = db.session.scalars(
        sa.select(Conversation).where(
            Conversation.contact_id == contact.id,
            Conversation.channel == channel,
            Conversation.status == "open",
        )
    ).first()
    if conversation is not None:
        if sender and not conversation.sender:
            conversation.sender = sender
        return conversation
    conversation = Conversation(
        contact_id=contact.id,
        channel=channel,
        sender=sender or default_sender(channel),
        assignee_id=contact.owner_id,
        status="open",
        last_activity_at=utcnow(),
    )
    try:
        with db.session.begin_nested():
            db.session.add(conversation)
    except IntegrityError:
        # Another transaction opened it first (the partial unique index): use theirs.
        return open_conversation(contact, channel, sender=sender)
    return conversation


def default_sender(channel: str) -> str | None:
    """Our number (E.164) or Messaging Service SID for new threads on `channel`."""
    config = current_app.config
    if channel == "whatsapp":
        return config.get("TWILIO_WHATSAPP_FROM") or config.get("TWILIO_MESSAGING_SERVICE_SID")
    return config.get("TWILIO_SMS_FROM") or config.get("TWILIO_MESSAGING_SERVICE_SID")


def sender_of(conversation: Conversation) -> str | None:
    """Who sends in this thread: its own sender, else the channel's configured one."""
    return conversation.sender or default_sender(conversation.channel)


# --- consent ----------------------------------------------------------------------


def opted_out(contact_id: int, channel: str) -> OptOut | None:
    return db.session.scalars(
        sa.select(OptOut).where(OptOut.contact_id == contact_id, OptOut.channel == channel)
    ).first()


def _record_consent(contact: Contact, channel: str, action: str, *, source, actor, at) -> None:
    db.session.add(
        ConsentEvent(
            contact_id=contact.id,
            channel=channel,
            action=action,
            source=source,
            at=at,
            actor_id=actor.id if actor else None,
        )
    )
    db.session.flush()


def opt_out(
    contact: Contact, channel: str, *, source: str, actor: User | None = None, at=None
) -> bool:
    """Stop all sending to the contact on `channel`; cancel what is still queued.

    Return False when the contact had already opted out.
    """
    at = at or utcnow()
    if opted_out(contact.id, channel) is not None:
        return False
    db.session.add(OptOut(contact_id=contact.id, channel=channel, source=source, at=at))
    _record_consent(contact, channel, "opt_out", source=source, actor=actor, at=at)
    cancel_unsent(
        contact.id,
        channel,
        reason=f"Not sent: the contact opted out of {CHANNEL_LABELS[channel]} ({source}).",
    )
    return True


def opt_in(
    contact: Contact, channel: str, *, source: str, actor: User | None = None, at=None
) -> bool:
    """Allow sending to the contact on `channel` again; False when they had not opted out."""
    existing = opted_out(contact.id, channel)
    if existing is None:
        return False
    db.session.delete(existing)
    _record_consent(contact, channel, "opt_in", source=source, actor=actor, at=at or utcnow())
    return True


def _hold_unsent(message: Message) -> bool:
    """Lock the message's row if no send job has started on it; True when it is held.

    The condition is checked by the UPDATE itself: on PostgreSQL a send job holding the
    row makes it wait, then re-check against what that job committed.
    """
    held = db.session.execute(
        sa.update(Message)
        .where(
            Message.id == message.id,
            Message.sid.is_(None),
            Message.dispatch_started_at.is_(None),
            Message.status.in_(("queued", "scheduled")),
        )
        .values(updated_at=Message.updated_at)
        .execution_options(synchronize_session=False)
    ).rowcount
    if held:
        db.session.refresh(message)
    return bool(held)


def cancel_unsent(contact_id: int, channel: str, *, reason: str) -> int:
    """Cancel the contact's outbound messages on `channel` that no job has started sending."""
    messages = db.session.scalars(
        sa.select(Message).where(
            Message.contact_id == contact_id,
            Message.channel == channel,
            Message.direction == "outbound",
            Message.sid.is_(None),
            Message.dispatch_started_at.is_(None),
            Message.status.in_(("queued", "scheduled")),
        )
    ).all()
    cancelled = 0
    for message in messages:
        if _hold_unsent(message):
            set_status(message, CANCELED, source="consent", reason=reason)
            cancelled += 1
    return cancelled


# --- templates --------------------------------------------------------------------

VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
VARIABLES = {
    "first_name": "First name",
    "last_name": "Last name",
    "name": "Full name",
    "phone": "Phone",
    "email": "Email",
    "coach_name": "Coach's name",
    # Filled in for a booking's messages (confirmation, reminders, follow-up); empty elsewhere.
    "service": "Session's service",
    "session_time": "Session's time (client's timezone)",
    "meeting_link": "Meeting link",
}
BOOKING_VARIABLES = ("service", "session_time", "meeting_link")


def template_variables(body: str) -> list[str]:
    """The variables of `body`, in order of first use."""
    seen: list[str] = []
    for name in VARIABLE.findall(body or ""):
        if name not in seen:
            seen.append(name)
    return seen


def unknown_variables(body: str) -> list[str]:
    return [name for name in template_variables(body) if name not in VARIABLES]


def variable_values(contact: Contact, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The contact's values, then `extra` (a booking's) over them."""
    first, _, last = (contact.name or "").strip().partition(" ")
    owner = getattr(contact, "owner", None)
    values = {
        "first_name": first,
        "last_name": last.strip(),
        "name": contact.name or "",
        "phone": contact.phone or "",
        "email": contact.email or "",
        "coach_name": (owner.name if owner else "") or "",
        **dict.fromkeys(BOOKING_VARIABLES, ""),
    }
    values.update(extra or {})
    return values


def render_body(body: str, contact: Contact, extra: dict[str, str] | None = None) -> str:
    """`body` with each {{variable}} replaced by the contact's value (or `extra`'s)."""
    values = variable_values(contact, extra)
    return VARIABLE.sub(lambda m: values.get(m.group(1), m.group(0)), body or "")


def content_variables(
    body: str, contact: Contact, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """A WhatsApp template's variables as Twilio numbers them: {"1": …} in order of use."""
    values = variable_values(contact, extra)
    return {str(n): values.get(name, "") for n, name in enumerate(template_variables(body), 1)}


# GSM 03.38: these take one septet, the extension table two; anything else needs UCS-2.
_GSM = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENDED = set("^{}\\[~]|€\f")


@dataclass(frozen=True)
class Segments:
    characters: int
    segments: int
    encoding: str  # "GSM-7" or "UCS-2"
    per_segment: int


def count_segments(body: str) -> Segments:
    """How many SMS segments `body` takes (GSM-7: 160, or 153 each when split; UCS-2: 70/67)."""
    body = body or ""
    if all(ch in _GSM or ch in _GSM_EXTENDED for ch in body):
        units = sum(2 if ch in _GSM_EXTENDED else 1 for ch in body)
        single, multi, encoding = 160, 153, "GSM-7"
    else:
        units = sum(2 if ord(ch) > 0xFFFF else 1 for ch in body)
        single, multi, encoding = 70, 67, "UCS-2"
    if units == 0:
        return Segments(0, 0, encoding, single)
    segments = 1 if units <= single else -(-units // multi)
    return Segments(len(body), segments, encoding, single if segments == 1 else multi)


# --- sending ----------------------------------------------------------------------


def twilio_missing() -> list[str]:
    """The settings sending still needs: credentials and a sender."""
    from crm.integrations import twilio

    missing = twilio.missing_settings()
    if not (
        current_app.config.get("TWILIO_SMS_FROM")
        or current_app.config.get("TWILIO_WHATSAPP_FROM")
        or current_app.config.get("TWILIO_MESSAGING_SERVICE_SID")
    ):
        missing.append("TWILIO_SMS_FROM")
    return missing


def refusal(conversation: Conversation, *, template: MessageTemplate | None = None) -> str | None:
    """Why nothing can be sent in this conversation now, or None when it can."""
    if twilio_missing():
        return "Twilio is not configured: messages cannot be sent."
    contact = conversation.contact
    if contact.deleted_at is not None:
        return "This contact is deleted."
    if not contact.phone:
        return "This contact has no phone number."
    if not sender_of(conversation):
        return f"No {conversation.channel_label} sender number is configured."
    optout = opted_out(contact.id, conversation.channel)
    if optout is not None:
        return (
            f"{contact.name} opted out of {conversation.channel_label} "
            f"({optout.source}, {optout.at:%Y-%m-%d %H:%M} UTC)."
        )
    if not conversation.window_open() and not (template and template.content_sid):
        return (
            "Outside WhatsApp's 24-hour window: only an approved template can be sent "
            "until the contact writes again."
        )
    return None


def queue_message(
    conversation: Conversation,
    *,
    body: str = "",
    actor: User | None,
    template: MessageTemplate | None = None,
    send_at: datetime | None = None,
    media: list[dict] | None = None,
    campaign_id: int | None = None,
    enqueue: bool = True,
    variables: dict[str, str] | None = None,
) -> Message:
    """Create an outbound message and enqueue its send after commit (or at `send_at`).

    `enqueue=False` leaves the enqueueing to the caller (campaigns send in batches);
    `variables` fill a template's {{variables}} over the contact's (a booking's time...).
    """
    reason = refusal(conversation, template=template)
    if reason:
        raise SendRefused(reason)
    contact = conversation.contact
    content_sid = None
    numbered = None
    if template is not None:
        body = render_body(template.body, contact, variables)
        # On WhatsApp an approved template goes by its Content SID; elsewhere as text.
        if conversation.channel == "whatsapp" and template.content_sid:
            content_sid = template.content_sid
            numbered = content_variables(template.body, contact, variables)
    body = (body or "").strip()
    if not body and not media:
        raise SendRefused("Write a message first.")
    if len(body) > 1600:
        raise SendRefused("A message can be at most 1,600 characters.")
    now = utcnow()
    later = send_at is not None and send_at > now
    message = Message(
        conversation_id=conversation.id,
        contact_id=contact.id,
        direction="outbound",
        channel=conversation.channel,
        body=body,
        media=media or [],
        status="scheduled" if later else "queued",
        sender_id=actor.id if actor else None,
        template_id=template.id if template else None,
        content_sid=content_sid,
        content_variables=numbered,
        campaign_id=campaign_id,
        send_at=send_at if later else None,
    )
    db.session.add(message)
    db.session.flush()
    db.session.add(MessageStatusEvent(message_id=message.id, status=message.status, at=now))
    touch_conversation(conversation, message, at=now)
    if enqueue:
        schedule_send(message)
    return message


def schedule_send(message: Message) -> None:
    """Enqueue the message's send job after commit: now, or at its `send_at`."""
    from jobs import enqueue_after_commit
    from jobs.messaging import send_job_options, send_message

    enqueue_after_commit("messaging", send_message, message.id, **send_job_options(message))


def touch_conversation(conversation: Conversation, message: Message, *, at: datetime) -> None:
    if conversation.last_activity_at is None or conversation.last_activity_at < at:
        conversation.last_activity_at = at
    preview = message.body or ("(media)" if message.media else "")
    conversation.last_message_preview = preview[:PREVIEW]


def status_callback_url() -> str | None:
    """Where Twilio posts status callbacks: PUBLIC_BASE_URL and the fixed path."""
    base = current_app.config.get("PUBLIC_BASE_URL")
    if has_request_context():
        if base:
            return base.rstrip("/") + url_for("webhooks.twilio_status")
        return url_for("webhooks.twilio_status", _external=True)
    if not base:
        return None  # a worker without PUBLIC_BASE_URL: no callbacks, statuses by fetch
    # Jobs have no request: build the path from the URL map alone.
    return base.rstrip("/") + current_app.url_map.bind("").build("webhooks.twilio_status")


def set_status(
    message: Message,
    status: str,
    *,
    source: str,
    at: datetime | None = None,
    error_code: int | None = None,
    reason: str | None = None,
) -> bool:
    """Move the message to `status` if that is forward; record the transition either way.

    Return True when the status changed.
    """
    at = at or utcnow()
    changes = status == CANCELED or advances(message.status, status)
    if status == CANCELED and message.status not in ("queued", "scheduled", *FAILURES):
        changes = False
    db.session.add(
        MessageStatusEvent(
            message_id=message.id,
            status=status,
            at=at,
            error_code=error_code,
            applied=changes,
            source=source,
        )
    )
    if changes:
        message.status = status
        if status in FAILURES or status == CANCELED:
            message.error_code = error_code
            message.error_reason = reason or error_reason(error_code)
        elif status in ("delivered", "read"):
            # A late delivery overrides an earlier failure: the message did arrive.
            message.error_code = None
            message.error_reason = None
        if status == "sent" and message.sent_at is None:
            message.sent_at = at
    db.session.flush()
    return changes


def retry_message(message: Message, *, actor: User | None) -> Message:
    """Send a failed or cancelled message again: a new message, as Twilio sees it.

    The failed one keeps its own SID, history and late callbacks; the copy points to it.
    """
    if not message.retryable:
        raise SendRefused("Only a failed or cancelled message can be retried.")
    if db.session.scalar(sa.select(Message.id).where(Message.retry_of_id == message.id)):
        raise SendRefused("This message was already retried.")
    conversation = message.conversation
    template = message.template if message.content_sid else None
    reason = refusal(conversation, template=template)
    if reason:
        raise SendRefused(reason)
    now = utcnow()
    again = Message(
        conversation_id=conversation.id,
        contact_id=message.contact_id,
        direction="outbound",
        channel=message.channel,
        body=message.body,
        media=list(message.media or []),
        status="queued",
        sender_id=actor.id if actor else message.sender_id,
        template_id=message.template_id,
        content_sid=message.content_sid,
        content_variables=message.content_variables,
        campaign_id=message.campaign_id,
        retry_of_id=message.id,
    )
    db.session.add(again)
    db.session.flush()
    db.session.add(MessageStatusEvent(message_id=again.id, status="queued", at=now, source="retry"))
    if message.campaign_id:
        from crm.conversations.models import CampaignRecipient

        db.session.execute(
            sa.update(CampaignRecipient)
            .where(CampaignRecipient.message_id == message.id)
            .values(message_id=again.id)
        )
    touch_conversation(conversation, again, at=now)
    db.session.flush()
    schedule_send(again)
    return again


def cancel_message(message: Message, *, actor: User | None) -> None:
    """Cancel a message that has not gone yet (send later, or still queued)."""
    if not _hold_unsent(message):
        raise SendRefused("This message is already on its way and cannot be cancelled.")
    name = actor.name or actor.email if actor else "the system"
    set_status(message, CANCELED, source="staff", reason=f"Cancelled by {name}.")


# --- inbound ----------------------------------------------------------------------


def _keyword(body: str) -> str:
    return (body or "").strip().upper()


def receive_message(payload, *, received_at: datetime) -> Message | None:
    """Thread an inbound SMS/WhatsApp from Twilio's webhook; None for a repeat delivery."""
    sid = payload.get("MessageSid") or payload.get("SmsMessageSid") or payload.get("SmsSid")
    if not sid:
        raise ValueError("an inbound message without a MessageSid")
    channel, phone = parse_address(payload.get("From", ""))
    wa_id = payload.get("WaId")
    if channel == "whatsapp" and wa_id and not phone:
        phone = "+" + wa_id.lstrip("+")
    if not phone.startswith("+"):
        raise ValueError(f"an inbound message from {payload.get('From')!r}, not a number")
    _lock_phone(phone)
    if db.session.scalar(sa.select(Message.id).where(Message.sid == sid)) is not None:
        return None
    _, our_number = parse_address(payload.get("To", ""))
    sender = payload.get("MessagingServiceSid") or our_number or None
    profile = (payload.get("ProfileName") or "").strip() if channel == "whatsapp" else None
    contact = find_or_create_contact(phone, profile_name=profile or None)
    conversation = open_conversation(contact, channel, sender=sender)
    media = []
    for n in range(int(payload.get("NumMedia") or 0)):
        url = payload.get(f"MediaUrl{n}")
        if url:
            media.append({"url": url, "content_type": payload.get(f"MediaContentType{n}") or ""})
    message = Message(
        conversation_id=conversation.id,
        contact_id=contact.id,
        direction="inbound",
        channel=channel,
        body=payload.get("Body") or "",
        media=media,
        sid=sid,
        status="received",
        sent_at=received_at,
    )
    db.session.add(message)
    db.session.flush()
    db.session.add(
        MessageStatusEvent(
            message_id=message.id, status="received", at=received_at, source="twilio"
        )
    )
    conversation.unread_count = (conversation.unread_count or 0) + 1
    if conversation.last_inbound_at is None or conversation.last_inbound_at < received_at:
        conversation.last_inbound_at = received_at
    touch_conversation(conversation, message, at=received_at)
    if contact.last_contact_at is None or contact.last_contact_at < received_at:
        contact.last_contact_at = received_at
    _handle_keyword(contact, conversation, message, received_at)
    db.session.flush()
    return message


def _handle_keyword(
    contact: Contact, conversation: Conversation, message: Message, at: datetime
) -> None:
    word = _keyword(message.body)
    if word in OPT_OUT_WORDS:
        opt_out(contact, conversation.channel, source=f"replied {word}", at=at)
    elif word in OPT_IN_WORDS:
        opt_in(contact, conversation.channel, source=f"replied {word}", at=at)
    elif word in HELP_WORDS:
        reply = current_app.config.get("MESSAGING_HELP_REPLY")
        if reply and not twilio_missing() and opted_out(contact.id, conversation.channel) is None:
            # SMS carriers answer HELP themselves only on short codes; we answer on ours.
            try:
                queue_message(conversation, body=reply, actor=None)
            except SendRefused:
                pass  # e.g. a WhatsApp sender with no approved help template


def record_status(payload, *, at: datetime) -> Message | None:
    """Apply a status callback; None when no message has its SID (yet)."""
    sid = payload.get("MessageSid") or payload.get("SmsSid")
    status = (payload.get("MessageStatus") or payload.get("SmsStatus") or "").lower()
    if not sid:
        raise ValueError("a status callback without a MessageSid")
    # Lock the row first: callbacks for one message run in parallel workers.
    locked = db.session.execute(
        sa.update(Message)
        .where(Message.sid == sid)
        .values(updated_at=Message.updated_at)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not locked:
        return None
    message = db.session.scalars(
        sa.select(Message).where(Message.sid == sid).execution_options(populate_existing=True)
    ).one()
    code = payload.get("ErrorCode")
    error_code = int(code) if code and str(code).isdigit() else None
    set_status(
        message,
        status,
        source="twilio",
        at=at,
        error_code=error_code,
        reason=error_reason(error_code, payload.get("ErrorMessage")),
    )
    if error_code == 21610 or (error_code == 63014 and message.channel == "whatsapp"):
        opt_out(message.conversation.contact, message.channel, source=f"Twilio {error_code}")
    return message


def mark_read(conversation: Conversation) -> None:
    if conversation.unread_count:
        conversation.unread_count = 0


# --- assignment and state ----------------------------------------------------------


def assign_conversation(conversation: Conversation, assignee: User | None, *, actor: User) -> None:
    """Give the conversation to `assignee` (None: nobody); a coach only takes or leaves it."""
    if actor.is_coach:
        taking = assignee is not None and assignee.id == actor.id
        leaving = assignee is None and conversation.assignee_id == actor.id
        if not (taking or leaving or conversation.assignee_id == (assignee and assignee.id)):
            raise Refused("A coach can only take a conversation or leave it.")
    conversation.assignee_id = assignee.id if assignee else None
    db.session.flush()


def close_conversation(conversation: Conversation, *, actor: User) -> None:
    """Close the thread: the next inbound message opens a new one."""
    conversation.status = "closed"
    db.session.flush()


def reopen_conversation(conversation: Conversation, *, actor: User) -> None:
    """Open the thread again, unless another one with the contact on its channel is open."""
    if conversation.status == "open":
        return
    label = CHANNEL_LABELS[conversation.channel]
    taken = (
        f"Another {label} conversation with {conversation.contact.name} is open: "
        "reply there, or close it first."
    )
    other = db.session.scalar(
        sa.select(Conversation.id).where(
            Conversation.contact_id == conversation.contact_id,
            Conversation.channel == conversation.channel,
            Conversation.status == "open",
            Conversation.id != conversation.id,
        )
    )
    if other is not None:
        raise Refused(taken)
    try:
        with db.session.begin_nested():
            conversation.status = "open"
    except IntegrityError:
        # Opened meanwhile by an inbound message (the partial unique index).
        db.session.refresh(conversation)
        raise Refused(taken) from None
