"""Conversations pages: the inbox and the thread view (blueprint `conversations`)."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Blueprint, abort, flash, make_response, request, url_for
from flask_login import current_user, login_required

from crm.contacts.listing import get_visible_or_404 as visible_contact_or_404

# `handlers` and `timeline` for their registrations: webhook handlers, contact sources.
from crm.conversations import handlers, inbox, services, timeline  # noqa: F401
from crm.conversations.models import CHANNEL_LABELS, CHANNELS, Conversation, MessageTemplate
from crm.extensions import db
from crm.htmx import redirect_303, render
from crm.users.models import User

bp = Blueprint("conversations", __name__, url_prefix="/conversations")

# Blocks of show.html that htmx may ask for with ?part=.
PARTS = ("header", "messages", "composer")
# The composer reloads itself on this event (the thread was closed or reopened).
UPDATED = "conversation-updated"
# The messages block reloads itself on this event (a message was queued).
MESSAGES_UPDATED = "messages-updated"


def _unchanged():
    """What a poll gets when nothing changed: htmx swaps nothing on a 204."""
    response = make_response("", 204)
    response.vary.add("HX-Request")
    return response


def _fragment() -> bool:
    return bool(request.htmx and not request.htmx.boosted)


def _when(value, full: bool = False) -> str:
    return inbox.local_time(value, current_user.timezone, full=full)


# --- the inbox ----------------------------------------------------------------------


@bp.get("/")
@login_required
def index():
    """The inbox: filters and search from the URL, latest activity first.

    htmx asks for the list (after a filter change), more rows (load more), or polls with
    the version it shows and gets 204 while nothing changed.
    """
    state = inbox.InboxQuery.from_args(request.args)
    after = request.args.get("after", "")
    polled = request.args.get("v")
    # The version is read before the rows: a change in between shows at the next poll.
    version = inbox.inbox_version(current_user)
    if _fragment() and polled == version:
        return _unchanged()
    shown = request.args.get("shown", 0, type=int)
    size = inbox.PAGE_SIZE
    if polled is not None and not after:
        # Keep what "load more" added, so a refresh does not shorten the list.
        size = min(max(shown, inbox.PAGE_SIZE), inbox.MAX_ROWS)
    try:
        rows, next_after = inbox.page(state, current_user, after=after, size=size)
    except (ValueError, OverflowError):
        abort(400, "The page marker is not valid. Go back to the inbox and try again.")
    shown = (shown if after else 0) + len(rows)
    list_url = _inbox_url(state)
    context = {
        "state": state,
        "rows": rows,
        "after": after,
        "list_url": list_url,
        "next_url": _inbox_url(state, after=next_after, shown=shown) if next_after else None,
        # A page that starts further down (no JavaScript) does not refresh itself.
        "poll_url": (
            None if after and not _fragment() else _inbox_url(state, v=version, shown=shown)
        ),
        "channels": CHANNEL_LABELS,
        "when": _when,
    }
    response = render("conversations/index.html", "rows" if after else "list", **context)
    if _fragment() and not after and polled is None:
        # The filter form sends its empty fields too; the address bar gets the clean URL.
        response.headers["HX-Push-Url"] = list_url
    return response


def _inbox_url(state: inbox.InboxQuery, **extra) -> str:
    query = state.query_string(**extra)
    return url_for("conversations.index") + ("?" + query if query else "")


@bp.post("/start")
@login_required
def start():
    """Open (or find) the contact's conversation on a channel, then show it."""
    channel = request.form.get("channel", "")
    contact_id = request.form.get("contact_id", type=int)
    if channel not in CHANNELS or contact_id is None:
        abort(400, "Choose a contact and a channel (SMS or WhatsApp).")
    contact = visible_contact_or_404(contact_id, current_user)
    conversation = services.open_conversation(contact, channel)
    db.session.commit()
    return redirect_303(url_for("conversations.show", conversation_id=conversation.id))


# --- the thread ---------------------------------------------------------------------


@dataclass
class Draft:
    """What the person typed into the composer: shown back as it was on an error."""

    body: str = ""
    template_id: str = ""
    send_at: str = ""

    @classmethod
    def from_form(cls, form) -> Draft:
        return cls(
            body=form.get("body", ""),
            template_id=form.get("template_id", ""),
            send_at=form.get("send_at", ""),
        )


def _template(draft: Draft) -> MessageTemplate | None:
    if not draft.template_id.isdigit():
        return None
    return db.session.get(MessageTemplate, int(draft.template_id))


def _header(conversation: Conversation, **overrides) -> dict:
    assignees = inbox.assignable_users()
    if current_user.is_coach:
        # A coach takes a conversation or leaves it; the current assignee stays visible.
        assignees = [u for u in assignees if u.id in (current_user.id, conversation.assignee_id)]
    return {"conversation": conversation, "assignees": assignees, "header_error": None} | overrides


def _messages(conversation: Conversation, version: str | None = None, **overrides) -> dict:
    before = request.args.get("before", type=int)
    if version is None:
        version = inbox.thread_version(conversation.id, current_user)
    messages, earlier = inbox.thread_messages(conversation, before=before)
    context = {
        "conversation": conversation,
        "messages": messages,
        "earlier": earlier,
        "before": before,
        "retried": inbox.retried(messages),
        "ticks": inbox.TICKS,
        "message_errors": {},
        # Only the newest messages refresh themselves.
        "poll_url": None
        if before
        else url_for(
            "conversations.show", conversation_id=conversation.id, part="messages", v=version
        ),
        "when": _when,
    }
    return context | overrides


def _composer(conversation: Conversation, draft: Draft | None = None, **overrides) -> dict:
    draft = draft or Draft()
    template = _template(draft)
    counter = inbox.counter_text(conversation, draft.body, template)
    return {
        "conversation": conversation,
        "composer": inbox.composer_state(conversation),
        "draft": draft,
        "counter": counter,
        "template_preview": (
            services.render_body(template.body, conversation.contact) if template else None
        ),
        "composer_error": None,
        "timezone": current_user.timezone or "UTC",
    } | overrides


def _page(conversation: Conversation, *, status: int = 200, block: str | None = None, **context):
    """The thread page, or one of its blocks for htmx; `context` overrides the defaults."""
    version = inbox.thread_version(conversation.id, current_user)
    full = {
        **_header(conversation),
        **_messages(conversation, version),
        **_composer(conversation, context.pop("draft", None)),
        **context,
    }
    return render("conversations/show.html", block, status=status, **full)


def _thread_url(conversation: Conversation, anchor: str | None = None) -> str:
    return url_for("conversations.show", conversation_id=conversation.id, _anchor=anchor)


@bp.get("/<int:conversation_id>")
@login_required
def show(conversation_id: int):
    """One thread: its messages, their delivery ticks and the composer; opening it reads it.

    htmx polls the messages block with the version it shows and gets 204 while nothing
    changed.
    """
    part = request.args.get("part")
    part = part if part in PARTS else None
    polled = request.args.get("v")
    version = None
    if _fragment() and part == "messages" and polled is not None:
        version = inbox.thread_version(conversation_id, current_user)
        if version is None:
            abort(404)
        if version == polled:
            return _unchanged()
    conversation = inbox.get_visible_or_404(conversation_id, current_user)
    services.mark_read(conversation)
    db.session.commit()
    if _fragment() and part == "header":
        return render("conversations/show.html", "header", **_header(conversation))
    if _fragment() and part == "messages":
        return render("conversations/show.html", "messages", **_messages(conversation, version))
    if _fragment() and part == "composer":
        return render("conversations/show.html", "composer", **_composer(conversation))
    return _page(conversation)


@bp.post("/<int:conversation_id>/messages")
@login_required
def message_create(conversation_id: int):
    """Queue a message (or schedule it); a refusal shows in the composer, the text kept."""
    conversation = inbox.get_visible_or_404(conversation_id, current_user)
    draft = Draft.from_form(request.form)
    template = _template(draft)
    error = None
    if conversation.status != "open":
        error = "This conversation is closed. Reopen it to reply."
    elif draft.template_id and template is None:
        error = "That template no longer exists."
    if error is None:
        try:
            send_at = inbox.parse_send_at(draft.send_at, current_user.timezone)
            message = services.queue_message(
                conversation,
                body=draft.body,
                actor=current_user,
                template=template,
                send_at=send_at,
            )
        except (ValueError, services.SendRefused) as exc:
            error = str(exc)
    if error is not None:
        context = _composer(conversation, draft, composer_error=error)
        if _fragment():
            return render("conversations/show.html", "composer", status=422, **context)
        return _page(conversation, status=422, draft=draft, composer_error=error)
    db.session.commit()
    if _fragment():
        response = render("conversations/show.html", "composer", **_composer(conversation))
        response.headers["HX-Trigger"] = MESSAGES_UPDATED
        return response
    if message.status == "scheduled":
        flash(f"Scheduled for {_when(message.send_at, full=True)}.", "success")
    else:
        flash("Message queued.", "success")
    return redirect_303(_thread_url(conversation, f"message-{message.id}"))


@bp.post("/<int:conversation_id>/counter")
@login_required
def counter(conversation_id: int):
    """The composer's character and segment count for what is typed so far."""
    conversation = inbox.get_visible_or_404(conversation_id, current_user)
    draft = Draft.from_form(request.form)
    if _fragment():
        return render("conversations/show.html", "counter", **_composer(conversation, draft))
    return _page(conversation, draft=draft)


def _message_action(conversation_id: int, message_id: int, action, done: str):
    conversation = inbox.get_visible_or_404(conversation_id, current_user)
    message = inbox.message_or_404(conversation, message_id)
    try:
        action(message, actor=current_user)
    except services.SendRefused as exc:
        db.session.rollback()
        if _fragment():
            context = _messages(conversation, message_errors={message.id: str(exc)})
            return render("conversations/show.html", "messages", status=422, **context)
        flash(str(exc), "error")
        return redirect_303(_thread_url(conversation, f"message-{message.id}"))
    db.session.commit()
    if _fragment():
        return render("conversations/show.html", "messages", **_messages(conversation))
    flash(done, "success")
    return redirect_303(_thread_url(conversation, f"message-{message.id}"))


@bp.post("/<int:conversation_id>/messages/<int:message_id>/retry")
@login_required
def message_retry(conversation_id: int, message_id: int):
    """Send a failed or cancelled message again, as a new message."""
    return _message_action(
        conversation_id, message_id, services.retry_message, "The message was queued again."
    )


@bp.post("/<int:conversation_id>/messages/<int:message_id>/cancel")
@login_required
def message_cancel(conversation_id: int, message_id: int):
    """Cancel a message that has not gone yet (send later)."""
    return _message_action(
        conversation_id, message_id, services.cancel_message, "The message was cancelled."
    )


def _change(conversation: Conversation, change, done: str, *, refresh_composer: bool):
    """Apply a change to the thread; htmx gets the header back, a browser the thread."""
    try:
        change()
    except services.Refused as exc:
        db.session.rollback()
        if _fragment():
            context = _header(conversation, header_error=str(exc))
            return render("conversations/show.html", "header", status=422, **context)
        flash(str(exc), "error")
        return redirect_303(_thread_url(conversation))
    db.session.commit()
    if not inbox.is_visible(conversation.id, current_user):
        # A coach who left a client's thread that is not theirs no longer sees it.
        flash(f"{done} It is no longer in your inbox.", "success")
        if _fragment():
            response = make_response("", 204)
            response.headers["HX-Redirect"] = url_for("conversations.index")
            return response
        return redirect_303(url_for("conversations.index"))
    if _fragment():
        response = render("conversations/show.html", "header", **_header(conversation))
        if refresh_composer:
            response.headers["HX-Trigger"] = UPDATED
        return response
    flash(done, "success")
    return redirect_303(_thread_url(conversation))


@bp.post("/<int:conversation_id>/assign")
@login_required
def assign(conversation_id: int):
    """Assign the conversation (a coach: take it or leave it)."""
    conversation = inbox.get_visible_or_404(conversation_id, current_user)
    raw = request.form.get("assignee_id", "")
    assignee = None
    if raw:
        assignee = db.session.get(User, int(raw)) if raw.isdigit() else None
        if assignee is None or not assignee.active:
            abort(400, "Choose someone from the list.")
    done = f"Assigned to {assignee.display_name}." if assignee else "Unassigned."

    def change():
        services.assign_conversation(conversation, assignee, actor=current_user)

    return _change(conversation, change, done, refresh_composer=False)


@bp.post("/<int:conversation_id>/close")
@login_required
def close(conversation_id: int):
    """Close the conversation."""
    conversation = inbox.get_visible_or_404(conversation_id, current_user)

    def change():
        services.close_conversation(conversation, actor=current_user)

    return _change(conversation, change, "Conversation closed.", refresh_composer=True)


@bp.post("/<int:conversation_id>/reopen")
@login_required
def reopen(conversation_id: int):
    """Reopen the conversation, unless another one on its channel is open."""
    conversation = inbox.get_visible_or_404(conversation_id, current_user)

    def change():
        services.reopen_conversation(conversation, actor=current_user)

    return _change(conversation, change, "Conversation reopened.", refresh_composer=True)
