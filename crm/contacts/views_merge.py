"""Duplicates: the scan over existing contacts, merge with preview, and undo."""

from __future__ import annotations

from flask import abort, flash, request, url_for
from flask_login import current_user, login_required

from crm.auth.access import scope_contacts
from crm.contacts.listing import get_visible_or_404
from crm.contacts.merge import (
    KINDS,
    MERGE_FIELDS,
    default_choices,
    duplicate_groups,
    merge_contacts,
    undo_merge,
)
from crm.contacts.models import STATUSES, Contact, ContactMerge
from crm.contacts.views import bp
from crm.extensions import db
from crm.htmx import redirect_303, render

FIELD_LABELS = {
    "name": "Name",
    "phone": "Phone",
    "email": "Email",
    "status": "Status",
    "owner_id": "Owner",
}


def _two_contacts(ids: list[str]) -> tuple[Contact, Contact]:
    """The two visible contacts named by `ids`, oldest first; 400 or 404 otherwise."""
    distinct = list(dict.fromkeys(i.strip() for i in ids if i.strip()))
    if len(distinct) != 2 or not all(i.isdigit() for i in distinct):
        abort(400, "Choose exactly two different contacts to merge.")
    first, second = (get_visible_or_404(int(i), current_user) for i in distinct)
    return tuple(sorted((first, second), key=lambda c: (c.created_at, c.id)))


@bp.get("/duplicates")
@login_required
def duplicates():
    """List groups of likely duplicates among the contacts this user sees."""
    kind = request.args.get("kind", "")
    after = request.args.get("after", "") if kind in KINDS else ""
    # "Show more" with htmx needs one kind's next groups; each scan costs a pass over the table.
    part = request.htmx and kind in KINDS and request.args.get("part") == "groups"
    sections = {}
    for name, label in KINDS.items():
        if part and name != kind:
            continue
        groups, next_after = duplicate_groups(
            name, current_user, after=after if name == kind else ""
        )
        sections[name] = {"label": label, "groups": groups, "next": next_after}
    if part:
        return render("contacts/duplicates.html", "groups", kind=kind, section=sections[kind])
    return render("contacts/duplicates.html", sections=sections)


@bp.get("/merge")
@login_required
def merge_preview():
    """Show two contacts side by side with a choice of surviving value per field."""
    older, newer = _two_contacts(request.args.getlist("ids"))
    survivor_id = request.args.get("survivor", "")
    survivor = newer if survivor_id == str(newer.id) else older
    other = older if survivor is newer else newer
    return render(
        "contacts/merge.html",
        contacts=(older, newer),
        survivor=survivor,
        choices=default_choices(survivor, other),
        fields=FIELD_LABELS,
        statuses=STATUSES,
    )


@bp.post("/merge")
@login_required
def merge():
    """Merge the chosen contact into the survivor, keeping the chosen value of each field."""
    older, newer = _two_contacts(request.form.getlist("ids"))
    by_id = {str(older.id): older, str(newer.id): newer}
    survivor = by_id.get(request.form.get("survivor", ""))
    if survivor is None:
        abort(400, "Choose which of the two contacts survives the merge.")
    merged = newer if survivor is older else older
    values = {}
    for name in MERGE_FIELDS:
        source = by_id.get(request.form.get(f"take_{name}", str(survivor.id)))
        if source is None:
            abort(400, f"Choose whose {FIELD_LABELS[name].lower()} to keep.")
        values[name] = getattr(source, name)
    merged_name = merged.name
    merge_contacts(survivor, merged, values, actor=current_user)
    db.session.commit()
    flash(f"{merged_name} was merged into this contact. You can undo it below.", "success")
    return redirect_303(url_for("contacts.show", contact_id=survivor.id))


@bp.post("/merges/<int:merge_id>/undo")
@login_required
def merge_undo(merge_id: int):
    """Undo a merge: both contacts and their related rows as they were before it."""
    merge = db.session.get(ContactMerge, merge_id)
    if merge is None:
        abort(404)
    survivor = get_visible_or_404(merge.survivor_id, current_user)
    # The merged contact is in the trash, so visible_contacts cannot find it; scope it here.
    query = scope_contacts(db.select(Contact).where(Contact.id == merge.merged_id), current_user)
    if db.session.execute(query).unique().scalar_one_or_none() is None:
        abort(404)
    try:
        merged = undo_merge(merge, actor=current_user)
    except ValueError as exc:
        flash(str(exc), "error")
        return redirect_303(url_for("contacts.show", contact_id=survivor.id))
    db.session.commit()
    flash(f"Merge undone: {merged.name} is back as a contact of its own.", "success")
    return redirect_303(url_for("contacts.show", contact_id=survivor.id))
