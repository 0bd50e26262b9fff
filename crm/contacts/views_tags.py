"""Tags: add and remove on a contact, suggestions, and the tags admin page."""

from __future__ import annotations

from flask import flash, request, url_for
from flask_login import current_user, login_required
from jinja2_fragments.flask import render_block

from crm.auth.access import STAFF_ROLES, roles_required
from crm.auth.views import safe_next
from crm.contacts.listing import get_visible_or_404
from crm.contacts.models import Contact, Tag
from crm.contacts.tags import (
    TagError,
    add_tag,
    merge_tags,
    remove_tag,
    rename_tag,
    suggest_tags,
    tags_with_counts,
)
from crm.contacts.views import bp
from crm.extensions import db
from crm.htmx import redirect_303, render

TEMPLATE = "contacts/tags.html"


def _fragment_wanted() -> bool:
    return bool(request.htmx) and not request.htmx.boosted


def _editor(contact: Contact, *, error: str | None = None, status: int = 200):
    return render(TEMPLATE, "tag_editor", status=status, contact=contact, error=error)


def _back_to(contact: Contact):
    target = safe_next(request.form.get("next"))
    return redirect_303(target or url_for("contacts.show", contact_id=contact.id))


@bp.get("/<int:contact_id>/tags")
@login_required
def tag_editor(contact_id: int):
    """The tag editor for one contact, swapped into its list row on demand."""
    contact = get_visible_or_404(contact_id, current_user)
    if not _fragment_wanted():
        return redirect_303(url_for("contacts.show", contact_id=contact.id))
    return _editor(contact)


@bp.post("/<int:contact_id>/tags")
@login_required
def tag_add(contact_id: int):
    """Add a tag to a contact, reusing an existing tag whatever its case."""
    contact = get_visible_or_404(contact_id, current_user)
    try:
        tag = add_tag(contact, request.form.get("name"), actor=current_user)
    except TagError as exc:
        if _fragment_wanted():
            return _editor(contact, error=exc.message, status=422)
        flash(exc.message, "error")
        return _back_to(contact)
    db.session.commit()
    if _fragment_wanted():
        return _editor(contact)
    flash(f"Tagged {contact.name} with {tag.name}.", "success")
    return _back_to(contact)


@bp.post("/<int:contact_id>/tags/<int:tag_id>/remove")
@login_required
def tag_remove(contact_id: int, tag_id: int):
    """Remove a tag from a contact."""
    contact = get_visible_or_404(contact_id, current_user)
    tag = db.get_or_404(Tag, tag_id)
    remove_tag(contact, tag, actor=current_user)
    db.session.commit()
    if _fragment_wanted():
        return _editor(contact)
    flash(f"Removed the tag {tag.name} from {contact.name}.", "success")
    return _back_to(contact)


@bp.get("/tags/suggest")
@login_required
def tags_suggest():
    """Up to ten existing tag names matching `q`, as <option>s for a datalist."""
    # The editor's input sends its own name ("name"); `q` is the documented parameter.
    term = request.args.get("q", request.args.get("name", ""))
    body = render_block(TEMPLATE, "suggestions", names=suggest_tags(term))
    # Only options, with or without htmx: the page around them would be the admin page.
    return body, 200, {"Vary": "HX-Request"}


def _tags_page(*, status: int = 200, **context):
    context.setdefault("merging", None)
    return render(TEMPLATE, "tags_table", status=status, tags=tags_with_counts(), **context)


@bp.get("/tags")
@roles_required(*STAFF_ROLES)
def tags_index():
    """List every tag with its contact count, to rename or merge."""
    merging = request.args.get("merge", "")
    return _tags_page(merging=int(merging) if merging.isdigit() else None)


@bp.post("/tags/<int:tag_id>/rename")
@roles_required(*STAFF_ROLES)
def tag_rename(tag_id: int):
    """Rename a tag; a name another tag has is refused with an offer to merge."""
    tag = db.get_or_404(Tag, tag_id)
    old = tag.name
    typed = request.form.get("name", "")
    try:
        rename_tag(tag, typed, actor=current_user)
    except TagError as exc:
        return _tags_page(status=422, errors={tag.id: exc}, typed={tag.id: typed})
    db.session.commit()
    notice = f"Renamed “{old}” to “{tag.name}”."
    if _fragment_wanted():
        return _tags_page(notice=notice)
    flash(notice, "success")
    return redirect_303(url_for("contacts.tags_index"))


@bp.post("/tags/<int:tag_id>/merge")
@roles_required(*STAFF_ROLES)
def tag_merge(tag_id: int):
    """Merge a tag into another: its contacts get the target, and the tag goes away."""
    source = db.get_or_404(Tag, tag_id)
    into = request.form.get("into", "")
    target = db.session.get(Tag, int(into)) if into.isdigit() else None
    if target is None:
        error = TagError("Choose the tag to merge into.")
        return _tags_page(status=422, errors={source.id: error}, merging=source.id)
    source_name = source.name
    try:
        moved = merge_tags(source, target, actor=current_user)
    except TagError as exc:
        return _tags_page(status=422, errors={source.id: exc}, merging=source.id)
    db.session.commit()
    notice = (
        f"Merged “{source_name}” into “{target.name}”: "
        f"{moved} contact{'s' if moved != 1 else ''} newly tagged."
    )
    if _fragment_wanted():
        return _tags_page(notice=notice)
    flash(notice, "success")
    return redirect_303(url_for("contacts.tags_index"))
