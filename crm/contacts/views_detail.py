"""The contact page: profile, tags, notes, change history and the timeline."""

from __future__ import annotations

from flask import abort, flash, request, url_for
from flask_login import current_user, login_required

from crm.contacts.listing import get_visible_or_404
from crm.contacts.models import Contact, ContactMerge, Note
from crm.contacts.notes import (
    add_note,
    can_change_note,
    delete_note,
    notes_page,
    read_note_body,
    update_note,
)
from crm.contacts.registry import Cursor, contact_timeline
from crm.contacts.timeline import action_title, field_changes, history_page
from crm.contacts.views import bp
from crm.extensions import db
from crm.htmx import redirect_303, render

TIMELINE_PAGE = 20
# Blocks of show.html that htmx may ask for with ?part=.
PARTS = ("notes", "note_items", "history", "history_items", "timeline", "timeline_items")
UPDATED = "contact-updated"


def _cursor_error():
    abort(400, "The page marker is not valid. Go back to the contact page and try again.")


def _context(contact: Contact, args=None, **overrides) -> dict:
    """Everything show.html needs; each section pages from its own cursor in `args`."""
    args = args if args is not None else {}
    notes_before = args.get("notes_before", "")
    history_before = args.get("history_before", "")
    timeline_before = args.get("timeline_before", "")
    try:
        notes, notes_next = notes_page(contact.id, before=notes_before)
        history, history_next = history_page(contact.id, before=history_before)
        timeline, timeline_next = contact_timeline(
            contact.id,
            before=Cursor.parse(timeline_before) if timeline_before else None,
            limit=TIMELINE_PAGE,
        )
    except ValueError:
        _cursor_error()
    merges = db.session.execute(
        db.select(ContactMerge, Contact)
        .join(Contact, Contact.id == ContactMerge.merged_id)
        .where(ContactMerge.survivor_id == contact.id, ContactMerge.undone_at.is_(None))
        .order_by(ContactMerge.created_at.desc())
        .limit(5)
    ).all()
    context = {
        "contact": contact,
        "notes": notes,
        "notes_next": notes_next,
        "notes_before": notes_before,
        "history": history,
        "history_lines": field_changes(history),
        "history_next": history_next,
        "history_before": history_before,
        "action_title": action_title,
        "timeline": timeline,
        "timeline_next": str(timeline_next) if timeline_next else None,
        "timeline_before": timeline_before,
        "merges": merges,
        "can_change": lambda note: can_change_note(note, current_user),
        "editing": None,
        "note_error": None,
        "note_draft": "",
        "edit_error": None,
        "edit_draft": None,
    }
    context.update(overrides)
    return context


def _note_or_404(contact_id: int, note_id: int) -> tuple[Contact, Note]:
    """The contact (visible to this user) and its note; 403 when the note is not theirs."""
    contact = get_visible_or_404(contact_id, current_user)
    note = db.session.get(Note, note_id)
    if note is None or note.contact_id != contact.id:
        abort(404)
    if not can_change_note(note, current_user):
        abort(403)
    return contact, note


def _refreshing(response):
    # History and timeline listen for this and reload themselves.
    response.headers["HX-Trigger"] = UPDATED
    return response


@bp.get("/<int:contact_id>")
@login_required
def show(contact_id: int):
    """Show one contact; a coach gets 404 for another coach's client."""
    contact = get_visible_or_404(contact_id, current_user)
    part = request.args.get("part")
    return render(
        "contacts/show.html", part if part in PARTS else None, **_context(contact, request.args)
    )


@bp.post("/<int:contact_id>/notes")
@login_required
def note_create(contact_id: int):
    """Add a note; an empty or too long note is shown back with its error."""
    contact = get_visible_or_404(contact_id, current_user)
    body, error = read_note_body(request.form.get("body"))
    if error:
        context = _context(contact, note_error=error, note_draft=request.form.get("body", ""))
        return render("contacts/show.html", "notes", status=422, **context)
    add_note(contact, body, actor=current_user)
    db.session.commit()
    if request.htmx:
        return _refreshing(render("contacts/show.html", "notes", **_context(contact)))
    flash("Note added.", "success")
    return redirect_303(url_for("contacts.show", contact_id=contact.id, _anchor="notes"))


@bp.get("/<int:contact_id>/notes/<int:note_id>/edit")
@login_required
def note_edit(contact_id: int, note_id: int):
    """Edit a note in place with htmx, or on the contact page without JavaScript."""
    contact, note = _note_or_404(contact_id, note_id)
    context = _context(contact, notes=[note], notes_next=None, editing=note.id)
    return render("contacts/show.html", "note_items", **context)


@bp.post("/<int:contact_id>/notes/<int:note_id>")
@login_required
def note_update(contact_id: int, note_id: int):
    """Save a note's new text; htmx gets the note back, a browser the contact page."""
    contact, note = _note_or_404(contact_id, note_id)
    body, error = read_note_body(request.form.get("body"))
    if error:
        context = _context(
            contact,
            notes=[note],
            notes_next=None,
            editing=note.id,
            edit_error=error,
            edit_draft=request.form.get("body", ""),
        )
        return render("contacts/show.html", "note_items", status=422, **context)
    update_note(note, body, actor=current_user)
    db.session.commit()
    if request.htmx:
        context = _context(contact, notes=[note], notes_next=None)
        return _refreshing(render("contacts/show.html", "note_items", **context))
    flash("Note saved.", "success")
    return redirect_303(url_for("contacts.show", contact_id=contact.id, _anchor=f"note-{note.id}"))


@bp.post("/<int:contact_id>/notes/<int:note_id>/delete")
@login_required
def note_delete(contact_id: int, note_id: int):
    """Delete a note (its text stays in the change history)."""
    contact, note = _note_or_404(contact_id, note_id)
    delete_note(note, actor=current_user)
    db.session.commit()
    if request.htmx:
        return _refreshing(render("contacts/show.html", "notes", **_context(contact)))
    flash("Note deleted.", "success")
    return redirect_303(url_for("contacts.show", contact_id=contact.id, _anchor="notes"))
