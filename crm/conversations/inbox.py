"""What the inbox and the thread read: who may see which conversation, the inbox's filters
and keyset pages, a thread's messages, and the one-query versions that polling compares.

Also the thread's small state changes (assign, close, reopen). They flush and never
commit, as services do; they belong in `services.py` once that module is free to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from flask import abort
from sqlalchemy.orm import contains_eager, joinedload
from werkzeug.datastructures import MultiDict

from crm.auth.access import STAFF_ROLES
from crm.contacts.models import Contact
from crm.conversations import services
from crm.conversations.models import (
    CHANNEL_LABELS,
    CHANNELS,
    Conversation,
    Message,
    MessageTemplate,
)
from crm.database import escape_like, utcnow
from crm.extensions import db
from crm.users.models import ROLES, User

PAGE_SIZE = 50
# A poll re-renders as many rows as the page shows ("load more" included), up to this.
MAX_ROWS = 500
THREAD_SIZE = 100
STATUS_FILTERS = ("open", "closed", "all")
MAX_BODY = 1600
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)

# Delivery ticks: (symbol, words) for each status of an outbound message.
TICKS = {
    "scheduled": ("⏲", "Scheduled"),
    "accepted": ("⏱", "Accepted"),
    "queued": ("⏱", "Queued"),
    "sending": ("⏱", "Sending"),
    "sent": ("✓", "Sent"),
    "delivered": ("✓✓", "Delivered"),
    "read": ("✓✓", "Read"),
    "failed": ("✗", "Failed"),
    "undelivered": ("✗", "Not delivered"),
    "canceled": ("⊘", "Canceled"),
}


# --- who sees what ----------------------------------------------------------------


def _scoped(query, user: User):
    """Limit a query joined to Contact to the conversations `user` may see.

    Staff see every live contact's threads; a coach those of their own clients and
    those assigned to them.
    """
    query = query.where(Contact.deleted_at.is_(None))
    if user.role in STAFF_ROLES:
        return query
    return query.where(sa.or_(Contact.owner_id == user.id, Conversation.assignee_id == user.id))


def get_visible_or_404(conversation_id: int, user: User) -> Conversation:
    """The conversation with its contact, or 404 when `user` may not see it."""
    query = (
        sa.select(Conversation)
        .join(Contact, Contact.id == Conversation.contact_id)
        .options(contains_eager(Conversation.contact).lazyload(Contact.tags))
        .where(Conversation.id == conversation_id)
    )
    conversation = db.session.scalars(_scoped(query, user)).unique().one_or_none()
    if conversation is None:
        abort(404)
    return conversation


def is_visible(conversation_id: int, user: User) -> bool:
    query = (
        sa.select(Conversation.id)
        .join(Contact, Contact.id == Conversation.contact_id)
        .where(Conversation.id == conversation_id)
    )
    return db.session.scalar(_scoped(query, user)) is not None


def _stamp(count: int, latest: datetime | None) -> str:
    micros = (latest - _EPOCH) // _MICRO if latest is not None else 0
    return f"{count}.{micros}"


def inbox_version(user: User) -> str:
    """One aggregate over the conversations `user` sees: it changes when any of them does.

    Services change a conversation on every message in or out, read, assignment and
    status change, so its `updated_at` moves; the count catches rows leaving the scope.
    """
    query = (
        sa.select(sa.func.count(Conversation.id), sa.func.max(Conversation.updated_at))
        .select_from(Conversation)
        .join(Contact, Contact.id == Conversation.contact_id)
    )
    count, latest = db.session.execute(_scoped(query, user)).one()
    return _stamp(count, latest)


def thread_version(conversation_id: int, user: User) -> str | None:
    """The thread's messages as one aggregate (None: not the user's to see), in one query.

    Every status change of a message moves its `updated_at`.
    """
    of_thread = Message.conversation_id == Conversation.id
    count = sa.select(sa.func.count(Message.id)).where(of_thread).scalar_subquery()
    latest = sa.select(sa.func.max(Message.updated_at)).where(of_thread).scalar_subquery()
    query = (
        sa.select(count, latest)
        .select_from(Conversation)
        .join(Contact, Contact.id == Conversation.contact_id)
        .where(Conversation.id == conversation_id)
    )
    row = db.session.execute(_scoped(query, user)).one_or_none()
    return None if row is None else _stamp(row[0], row[1])


# --- the inbox ----------------------------------------------------------------------


@dataclass
class InboxQuery:
    """The inbox's filters, as they travel in the URL."""

    q: str = ""
    mine: bool = False
    unassigned: bool = False
    status: str = "open"
    channel: str = ""
    unread: bool = False

    @classmethod
    def from_args(cls, args: MultiDict) -> InboxQuery:
        status = args.get("status", "open")
        channel = args.get("channel", "")
        return cls(
            q=(args.get("q") or "").strip()[:200],
            mine=bool(args.get("mine")),
            unassigned=bool(args.get("unassigned")),
            status=status if status in STATUS_FILTERS else "open",
            channel=channel if channel in CHANNELS else "",
            unread=bool(args.get("unread")),
        )

    def to_args(self) -> list[tuple[str, str]]:
        """The filters as query arguments, defaults left out."""
        args = []
        if self.q:
            args.append(("q", self.q))
        for name in ("mine", "unassigned", "unread"):
            if getattr(self, name):
                args.append((name, "1"))
        if self.status != "open":
            args.append(("status", self.status))
        if self.channel:
            args.append(("channel", self.channel))
        return args

    def query_string(self, **extra) -> str:
        return urlencode(self.to_args() + [(k, str(v)) for k, v in extra.items()])

    @property
    def filtered(self) -> bool:
        return self.to_args() != []


@dataclass(slots=True)
class InboxRow:
    id: int
    channel: str
    status: str
    unread_count: int
    last_activity_at: datetime
    preview: str | None
    contact_id: int
    contact_name: str
    assignee_id: int | None
    assignee_name: str | None
    assignee_email: str | None

    @property
    def channel_label(self) -> str:
        return CHANNEL_LABELS[self.channel]

    @property
    def assignee(self) -> str | None:
        return self.assignee_name or self.assignee_email


def matching(state: InboxQuery, user: User):
    """The inbox rows `user` sees under the filters of `state` (unordered)."""
    query = (
        sa.select(
            Conversation.id,
            Conversation.channel,
            Conversation.status,
            Conversation.unread_count,
            Conversation.last_activity_at,
            Conversation.last_message_preview,
            Contact.id,
            Contact.name,
            Conversation.assignee_id,
            User.name,
            User.email,
        )
        .select_from(Conversation)
        .join(Contact, Contact.id == Conversation.contact_id)
        .outerjoin(User, User.id == Conversation.assignee_id)
    )
    query = _scoped(query, user)
    if state.status != "all":
        query = query.where(Conversation.status == state.status)
    if state.channel:
        query = query.where(Conversation.channel == state.channel)
    whose = []
    if state.mine:
        whose.append(Conversation.assignee_id == user.id)
    if state.unassigned:
        whose.append(Conversation.assignee_id.is_(None))
    if whose:
        query = query.where(sa.or_(*whose))
    if state.unread:
        query = query.where(Conversation.unread_count > 0)
    if state.q:
        pattern = f"%{escape_like(state.q)}%"
        query = query.where(
            sa.exists().where(
                Message.conversation_id == Conversation.id,
                Message.body.ilike(pattern, escape="\\"),
            )
        )
    return query


def encode_cursor(row: InboxRow) -> str:
    return f"{(row.last_activity_at - _EPOCH) // _MICRO}.{row.id}"


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """The (last activity, id) a page continues after; ValueError when it is not one."""
    micros, _, conversation_id = cursor.partition(".")
    return _EPOCH + timedelta(microseconds=int(micros)), int(conversation_id)


def page(
    state: InboxQuery, user: User, *, after: str = "", size: int = PAGE_SIZE
) -> tuple[list[InboxRow], str | None]:
    """Up to `size` rows, latest activity first, after the cursor; and the next cursor."""
    query = matching(state, user)
    if after:
        at, conversation_id = decode_cursor(after)
        query = query.where(
            sa.or_(
                Conversation.last_activity_at < at,
                sa.and_(Conversation.last_activity_at == at, Conversation.id < conversation_id),
            )
        )
    query = query.order_by(Conversation.last_activity_at.desc(), Conversation.id.desc())
    rows = [InboxRow(*r) for r in db.session.execute(query.limit(size + 1))]
    if len(rows) > size:
        rows = rows[:size]
        return rows, encode_cursor(rows[-1])
    return rows, None


# --- the thread ---------------------------------------------------------------------


def thread_messages(
    conversation: Conversation, *, before: int | None = None, size: int = THREAD_SIZE
) -> tuple[list[Message], int | None]:
    """The last `size` messages (before message `before`), oldest first; and whether there
    are earlier ones, as the id to page back from."""
    query = (
        sa.select(Message)
        .options(joinedload(Message.sender))
        .where(Message.conversation_id == conversation.id)
        .order_by(Message.id.desc())
        .limit(size + 1)
    )
    if before is not None:
        query = query.where(Message.id < before)
    messages = list(db.session.scalars(query))
    earlier = None
    if len(messages) > size:
        messages = messages[:size]
        earlier = messages[-1].id
    messages.reverse()
    return messages, earlier


def retried(messages: list[Message]) -> set[int]:
    """The ids among `messages` that were sent again already (their Retry is done)."""
    ids = [m.id for m in messages if m.retryable]
    if not ids:
        return set()
    query = sa.select(Message.retry_of_id).where(Message.retry_of_id.in_(ids))
    return set(db.session.scalars(query))


def message_or_404(conversation: Conversation, message_id: int) -> Message:
    message = db.session.get(Message, message_id)
    if message is None or message.conversation_id != conversation.id:
        abort(404)
    return message


def assignable_users() -> list[User]:
    """Who a conversation can be assigned to: active users of any role, by name."""
    query = sa.select(User).where(User.active.is_(True), User.role.in_(ROLES))
    return list(db.session.scalars(query.order_by(User.name, User.email)))


def window_state(conversation: Conversation, now: datetime | None = None) -> str | None:
    """WhatsApp's 24-hour window in words (None on SMS, which has no window)."""
    if conversation.channel != "whatsapp":
        return None
    now = now or utcnow()
    closes = conversation.window_closes_at()
    if closes is None or closes <= now:
        return "Window closed — templates only"
    minutes = max(1, int((closes - now).total_seconds() // 60))
    hours, minutes = divmod(minutes, 60)
    left = f"{hours} h {minutes} min" if hours else f"{minutes} min"
    return f"Window open, closes in {left}"


@dataclass
class Composer:
    """What the composer may offer in this conversation now."""

    blocked: str | None  # nothing can be sent, and why
    twilio_missing: list[str]
    template_only: bool  # WhatsApp outside its window: approved templates only
    templates: list[MessageTemplate]
    window: str | None


def composer_state(conversation: Conversation) -> Composer:
    templates = list(db.session.scalars(sa.select(MessageTemplate).order_by(MessageTemplate.name)))
    window_open = conversation.window_open()
    if not window_open:
        templates = [t for t in templates if t.content_sid]
    missing = services.twilio_missing()
    template_only = False
    if conversation.status != "open":
        blocked = "This conversation is closed. Reopen it to reply."
    else:
        # An approved template passes the window check: what refuses it is everything else.
        blocked = services.refusal(conversation, template=SimpleNamespace(content_sid="HX"))
        if blocked is None and not window_open:
            if templates:
                template_only = True
            else:
                blocked = (
                    "Outside WhatsApp's 24-hour window, and no approved template exists yet "
                    "(a template with a Twilio Content SID)."
                )
    return Composer(
        blocked=blocked,
        twilio_missing=missing,
        template_only=template_only,
        templates=templates,
        window=window_state(conversation),
    )


def counter_text(conversation: Conversation, body: str, template: MessageTemplate | None) -> str:
    """Characters and SMS segments of what would be sent."""
    if template is not None:
        body = services.render_body(template.body, conversation.contact)
    counted = services.count_segments(body)
    if counted.characters == 0:
        return "0 characters"
    chars = f"{counted.characters:,} character{'s' if counted.characters != 1 else ''}"
    if counted.characters > MAX_BODY:
        return f"{chars}: too long, at most {MAX_BODY:,}"
    if conversation.channel != "sms":
        return f"{chars} of {MAX_BODY:,}"
    plural = "s" if counted.segments != 1 else ""
    return f"{chars} · {counted.segments} SMS segment{plural} ({counted.encoding})"


def local_time(value: datetime | None, timezone: str, *, full: bool = False) -> str:
    """`value` on the user's clock: the time today, else the date (and time when `full`)."""
    if value is None:
        return ""
    zone = ZoneInfo(timezone or "UTC")
    local = value.astimezone(zone)
    if full:
        return local.strftime("%Y-%m-%d %H:%M")
    today = utcnow().astimezone(zone).date()
    if local.date() == today:
        return local.strftime("%H:%M")
    if local.year == today.year:
        return local.strftime("%d %b")
    return local.strftime("%Y-%m-%d")


def parse_send_at(raw: str, timezone: str) -> datetime | None:
    """A datetime-local value on the user's clock, in UTC; ValueError when unusable."""
    raw = (raw or "").strip()
    if not raw:
        return None
    try:
        local = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError("Give the send time as a date and a time.") from None
    if local.tzinfo is not None:
        raise ValueError("Give the send time as a date and a time.")
    at = local.replace(tzinfo=ZoneInfo(timezone or "UTC")).astimezone(UTC)
    if at <= utcnow():
        raise ValueError(f"Pick a time in the future (your clock: {timezone or 'UTC'}).")
    return at
