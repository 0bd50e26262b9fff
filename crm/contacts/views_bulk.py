"""Bulk actions over selected or matching contacts, undo and the trash."""

from __future__ import annotations

from urllib.parse import urlencode

from flask import abort, flash, make_response, request, url_for
from flask_login import current_user, login_required

from crm.auth.access import roles_required
from crm.auth.views import safe_next
from crm.contacts.bulk import (
    BulkError,
    BulkRequest,
    can_undo,
    create_bulk_action,
    describe,
    get_trashed,
    may_see_action,
    purge_contact,
    read_bulk_form,
    restore_contact,
    run_all_chunks,
    runs_as_job,
    trash_page,
    undo_bulk_action,
    undo_deadline,
)
from crm.contacts.listing import get_visible_or_404
from crm.contacts.models import BulkAction
from crm.contacts.views import bp
from crm.extensions import db
from crm.htmx import redirect_303, render
from jobs import enqueue_after_commit
from jobs.contacts import run_bulk_action

TRASH_PAGE_SIZE = 50


def _fragment_wanted() -> bool:
    return bool(request.htmx) and not request.htmx.boosted


def _list_url(query: str = "") -> str:
    base = url_for("contacts.index")
    return f"{base}?{query}" if query else base


def _bulk_page(
    action: BulkAction | None,
    *,
    error: str | None = None,
    status: int = 200,
    restored: int | None = None,
    query: str = "",
):
    if action is not None and action.scope == "matching":
        query = action.selection.get("query", "")
    response = render(
        "contacts/bulk.html",
        "bulk_status",
        status=status,
        action=action,
        error=error,
        restored=restored,
        summary=describe(action) if action is not None else None,
        undo_allowed=action is not None and can_undo(action),
        undo_deadline=undo_deadline(action) if action is not None else None,
        back_url=_list_url(query),
    )
    # The list reloads its rows once the change is in.
    if action is not None and action.status in ("done", "undone") and error is None:
        response.headers["HX-Trigger"] = "contacts-updated"
    return response


def _get_action_or_404(action_id: int) -> BulkAction:
    action = db.session.get(BulkAction, action_id)
    if action is None or not may_see_action(action, current_user):
        abort(404)
    return action


@bp.post("/bulk")
@login_required
def bulk():
    """Apply a bulk action to selected or matching contacts: inline, or as a job from 1,000."""
    if request.form.get("action") == "owner" and current_user.is_coach:
        abort(403)  # a coach's clients stay their own
    try:
        bulk_request = read_bulk_form(request.form, actor=current_user)
    except BulkError as exc:
        db.session.rollback()  # a tag created for the action is not kept
        return _bulk_page(None, error=exc.message, status=422, query=request.form.get("query", ""))
    action = create_bulk_action(bulk_request, actor=current_user)
    if runs_as_job(action):
        enqueue_after_commit(
            "default",
            run_bulk_action,
            action.id,
            job_id=f"bulk-{action.id}",
            unique=True,
            # Chunks commit as they go, so a timeout loses at most one chunk.
            job_timeout=3600,
        )
    else:
        run_all_chunks(action)
    db.session.commit()
    if not _fragment_wanted():
        return redirect_303(url_for("contacts.bulk_show", action_id=action.id))
    return _bulk_page(action)


@bp.get("/bulk/<int:action_id>")
@login_required
def bulk_show(action_id: int):
    """Show a bulk action's progress or result; the fragment polls itself while it runs."""
    return _bulk_page(_get_action_or_404(action_id))


@bp.post("/bulk/<int:action_id>/undo")
@login_required
def bulk_undo(action_id: int):
    """Restore the contacts a bulk delete trashed, within 30 seconds of it finishing."""
    action = _get_action_or_404(action_id)
    try:
        restored = undo_bulk_action(action, actor=current_user)
    except BulkError as exc:
        return _bulk_page(action, error=exc.message, status=409)
    db.session.commit()
    if _fragment_wanted():
        return _bulk_page(action, restored=restored)
    flash(f"Restored {restored} contact{'s' if restored != 1 else ''}.", "success")
    target = safe_next(request.form.get("next"))
    return redirect_303(target or url_for("contacts.bulk_show", action_id=action.id))


@bp.post("/<int:contact_id>/delete")
@login_required
def delete(contact_id: int):
    """Move one contact to the trash, as a bulk action of one with the same undo."""
    contact = get_visible_or_404(contact_id, current_user)
    action = create_bulk_action(
        BulkRequest(action="delete", params={}, scope="selected", ids=[contact.id]),
        actor=current_user,
    )
    run_all_chunks(action)
    db.session.commit()
    if _fragment_wanted():
        return _bulk_page(action)
    # A flash with a button: base.html renders a mapping message as a one-button form.
    flash(
        {
            "text": f"{contact.name} was moved to the trash.",
            "action": url_for("contacts.bulk_undo", action_id=action.id),
            "label": "Undo",
            "next": url_for("contacts.show", contact_id=contact.id),
        },
        "success",
    )
    return redirect_303(url_for("contacts.index"))


@bp.get("/trash")
@login_required
def trash():
    """List the deleted contacts this user may see, newest deletion first."""
    try:
        contacts, next_after = trash_page(
            current_user, after=request.args.get("after", ""), size=TRASH_PAGE_SIZE
        )
    except BulkError as exc:
        abort(400, exc.message)
    next_url = None
    if next_after:
        next_url = url_for("contacts.trash") + "?" + urlencode({"after": next_after})
    return render(
        "contacts/trash.html",
        "trash_rows",
        contacts=contacts,
        next_url=next_url,
        can_purge=current_user.is_admin,
    )


def _get_trashed_or_404(contact_id: int):
    contact = get_trashed(contact_id, current_user)
    if contact is None:
        abort(404)
    return contact


def _row_removed():
    # An empty 200 swaps the row away (htmx does not swap a 204 here).
    response = make_response("", 200)
    response.headers["HX-Trigger"] = "contacts-updated"
    return response


@bp.post("/<int:contact_id>/restore")
@login_required
def restore(contact_id: int):
    """Take one contact out of the trash."""
    contact = _get_trashed_or_404(contact_id)
    restore_contact(contact, actor=current_user)
    db.session.commit()
    if _fragment_wanted():
        return _row_removed()
    flash(f"{contact.name} was restored.", "success")
    return redirect_303(url_for("contacts.trash"))


@bp.post("/<int:contact_id>/purge")
@roles_required("admin")
def purge(contact_id: int):
    """Delete a trashed contact for good, after a confirmation (a page without JavaScript)."""
    contact = _get_trashed_or_404(contact_id)
    if not request.form.get("confirmed"):
        return render("contacts/trash.html", confirming=contact, contacts=[], can_purge=True)
    name = contact.name
    purge_contact(contact, actor=current_user)
    db.session.commit()
    if _fragment_wanted():
        return _row_removed()
    flash(f"{name} was deleted for good.", "success")
    return redirect_303(url_for("contacts.trash"))
