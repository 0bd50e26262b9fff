from __future__ import annotations

from flask import Blueprint, abort, request, url_for
from flask_login import current_user, login_required

from crm.auth.access import scope_contacts
from crm.contacts.models import Contact
from crm.extensions import db
from crm.htmx import render

bp = Blueprint("contacts", __name__, url_prefix="/contacts")

PAGE_SIZE = 50


def _visible():
    query = db.select(Contact).where(Contact.deleted_at.is_(None))
    return scope_contacts(query, current_user)


@bp.get("/")
@login_required
def index():
    """List the contacts this user may see, by name, 50 at a time."""
    after = request.args.get("after", "")
    query = _visible().order_by(Contact.name, Contact.id)
    if after:
        name, _, last_id = after.rpartition("|")
        if not last_id.isdigit():
            abort(400, "The page marker is not valid.")
        query = query.where(
            db.or_(Contact.name > name, db.and_(Contact.name == name, Contact.id > int(last_id)))
        )
    contacts = list(db.session.execute(query.limit(PAGE_SIZE + 1)).scalars())
    next_url = None
    if len(contacts) > PAGE_SIZE:
        contacts = contacts[:PAGE_SIZE]
        last = contacts[-1]
        next_url = url_for("contacts.index", after=f"{last.name}|{last.id}")
    return render("contacts/index.html", "rows", contacts=contacts, next_url=next_url)


@bp.get("/<int:contact_id>")
@login_required
def show(contact_id: int):
    """Show one contact; a coach gets 404 for another coach's client."""
    contact = db.session.execute(_visible().where(Contact.id == contact_id)).scalar_one_or_none()
    if contact is None:
        abort(404)
    return render("contacts/show.html", contact=contact)
