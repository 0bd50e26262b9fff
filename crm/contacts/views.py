from __future__ import annotations

from urllib.parse import urlencode

import phonenumbers
from flask import Blueprint, current_app, flash, request, url_for
from flask_login import current_user, login_required

from crm.contacts import listing
from crm.contacts.listing import ListQuery, get_visible_or_404, visible_contacts
from crm.contacts.models import STATUSES, Contact
from crm.contacts.services import (
    create_contact,
    find_duplicates,
    read_contact_form,
    update_contact,
)
from crm.extensions import db
from crm.htmx import redirect_303, render
from crm.users.models import User

bp = Blueprint("contacts", __name__, url_prefix="/contacts")

PAGE_SIZE = 50


@bp.app_template_filter("phone")
def format_phone(e164: str | None) -> str:
    """Show a stored E.164 number nationally when it is local, internationally otherwise."""
    if not e164:
        return ""
    try:
        number = phonenumbers.parse(e164)
    except phonenumbers.NumberParseException:
        return e164
    local = (
        phonenumbers.region_code_for_number(number) == current_app.config["DEFAULT_PHONE_REGION"]
    )
    style = (
        phonenumbers.PhoneNumberFormat.NATIONAL
        if local
        else phonenumbers.PhoneNumberFormat.INTERNATIONAL
    )
    return phonenumbers.format_number(number, style)


def _coaches() -> list[User]:
    query = db.select(User).filter_by(role="coach", active=True).order_by(User.name)
    return list(db.session.execute(query).scalars())


def _duplicates(values: dict, exclude_id: int | None) -> list[Contact]:
    # Only duplicates this user may open are named; a coach never learns of others' clients.
    return find_duplicates(
        values.get("phone"),
        values.get("email"),
        within=visible_contacts(current_user),
        exclude_id=exclude_id,
    )


def _form_page(form, contact: Contact | None, status: int = 200, duplicates=()):
    return render(
        "contacts/form.html",
        "contact_form",
        status=status,
        form=form,
        contact=contact,
        coaches=_coaches(),
        statuses=STATUSES,
        duplicates=duplicates,
    )


@bp.get("/")
@login_required
def index():
    """List the contacts this user may see: search, filters and sort from the URL."""
    state = ListQuery.from_args(request.args)
    contacts, next_after = listing.page(
        state, current_user, after=request.args.get("after", ""), size=PAGE_SIZE
    )
    next_url = None
    if next_after:
        next_url = (
            url_for("contacts.index")
            + "?"
            + state.query_string()
            + "&"
            + urlencode({"after": next_after})
        )
    return render(
        "contacts/index.html",
        "rows",
        contacts=contacts,
        next_url=next_url,
        statuses=STATUSES,
        state=state,
    )


@bp.get("/new")
@login_required
def new():
    """Show the form for a new contact."""
    return _form_page(None, None)


@bp.post("/")
@login_required
def create():
    """Create a contact; warn, without blocking, when its phone or email already exists."""
    form = read_contact_form(
        request.form, region=current_app.config["DEFAULT_PHONE_REGION"], actor=current_user
    )
    if not form.valid:
        return _form_page(form, None, 422)
    duplicates = _duplicates(form.clean, None)
    if duplicates and not request.form.get("confirm_duplicate"):
        return _form_page(form, None, 200, duplicates)
    contact = create_contact(form.clean, actor=current_user)
    db.session.commit()
    flash(f"{contact.name} was added.", "success")
    return redirect_303(url_for("contacts.show", contact_id=contact.id))


@bp.get("/<int:contact_id>/edit")
@login_required
def edit(contact_id: int):
    """Edit a contact: inline in its list row with htmx, or as a form page."""
    contact = get_visible_or_404(contact_id, current_user)
    if request.htmx and request.args.get("inline"):
        return render(
            "contacts/index.html",
            "rows",
            contacts=[contact],
            editing={contact.id: None},
            statuses=STATUSES,
        )
    return _form_page(None, contact)


@bp.get("/<int:contact_id>/row")
@login_required
def row(contact_id: int):
    """One list row, read-only (cancelling an inline edit)."""
    contact = get_visible_or_404(contact_id, current_user)
    return render("contacts/index.html", "rows", contacts=[contact], statuses=STATUSES)


@bp.post("/<int:contact_id>")
@login_required
def update(contact_id: int):
    """Save a contact from the form page or from its inline row."""
    contact = get_visible_or_404(contact_id, current_user)
    inline = bool(request.htmx and request.form.get("inline"))
    form = read_contact_form(
        request.form,
        region=current_app.config["DEFAULT_PHONE_REGION"],
        actor=current_user,
        current=contact,
    )
    if not form.valid:
        if inline:
            return render(
                "contacts/index.html",
                "rows",
                status=422,
                contacts=[contact],
                editing={contact.id: form},
                statuses=STATUSES,
            )
        return _form_page(form, contact, 422)
    update_contact(contact, form.clean, actor=current_user)
    db.session.commit()
    if inline:
        duplicates = _duplicates(form.clean, contact.id)
        return render(
            "contacts/index.html",
            "rows",
            contacts=[contact],
            statuses=STATUSES,
            row_duplicates={contact.id: duplicates},
        )
    flash(f"{contact.name} was saved.", "success")
    return redirect_303(url_for("contacts.show", contact_id=contact.id))


# The rest of the contacts pages live beside this module, on the same blueprint.
from crm.contacts import (  # noqa: E402, F401
    views_bulk,
    views_detail,
    views_import,
    views_merge,
    views_tags,
)
