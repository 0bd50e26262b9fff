"""Create and change contacts. Services flush; the calling view commits."""

from __future__ import annotations

from dataclasses import dataclass, field

import phonenumbers

from crm.audit.services import diff, record_change
from crm.contacts.models import STATUSES, Contact
from crm.extensions import db
from crm.users.models import User
from crm.validation import is_email

EDITABLE = ("name", "phone", "email", "status", "owner_id", "preferred_channel")
CHANNELS = ("sms", "whatsapp")  # how booking messages reach the contact; None: SMS


@dataclass
class ContactForm:
    """Typed input, cleaned values and per-field errors for one contact form."""

    raw: dict[str, str]
    clean: dict = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return not self.errors


def normalize_phone(raw: str, region: str) -> str:
    """Return `raw` in E.164, read against `region` when it has no country code."""
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError("This does not look like a phone number.") from exc
    if not phonenumbers.is_valid_number(number):
        raise ValueError(
            f"This is not a valid phone number for {region}; add the country code, e.g. +44."
        )
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def read_contact_form(
    data, *, region: str, actor: User, current: Contact | None = None
) -> ContactForm:
    """Validate a contact form: name required, phone to E.164, email syntax.

    Fields the form does not carry (an inline row edits only some) keep `current`'s values.
    """

    def typed(key: str) -> str:
        if key in data or current is None:
            return (data.get(key) or "").strip()
        value = getattr(current, key)
        return "" if value is None else str(value)

    form = ContactForm(raw={key: typed(key) for key in EDITABLE})
    raw, clean, errors = form.raw, form.clean, form.errors
    if not raw["name"]:
        errors["name"] = "Enter a name."
    elif len(raw["name"]) > 200:
        errors["name"] = "Keep the name under 200 characters."
    clean["name"] = raw["name"]
    clean["phone"] = None
    if raw["phone"]:
        try:
            clean["phone"] = normalize_phone(raw["phone"], region)
        except ValueError as exc:
            errors["phone"] = str(exc)
    clean["email"] = raw["email"].lower() or None
    if raw["email"] and not is_email(raw["email"]):
        errors["email"] = "Enter a valid email address, like name@example.com."
    clean["status"] = raw["status"] or "active"
    if clean["status"] not in STATUSES:
        errors["status"] = f"Status must be one of {', '.join(STATUSES)}."
    clean["preferred_channel"] = raw["preferred_channel"] or None
    if clean["preferred_channel"] not in (None, *CHANNELS):
        errors["preferred_channel"] = "Choose SMS or WhatsApp."
    if actor.role == "coach":
        clean["owner_id"] = actor.id  # a coach's contacts are always their own
    elif raw["owner_id"]:
        owner = db.session.get(User, int(raw["owner_id"])) if raw["owner_id"].isdigit() else None
        if owner is None or owner.role != "coach" or not owner.active:
            errors["owner_id"] = "Choose an active coach."
        clean["owner_id"] = owner.id if owner is not None else None
    else:
        clean["owner_id"] = None
    return form


def find_duplicates(
    phone: str | None, email: str | None, *, within, exclude_id: int | None = None
) -> list[Contact]:
    """Contacts of the `within` query that share this phone or email (email ignoring case)."""
    conditions = []
    if phone:
        conditions.append(Contact.phone == phone)
    if email:
        conditions.append(Contact.email == email.lower())  # stored lower-case
    if not conditions:
        return []
    query = within.where(db.or_(*conditions))
    if exclude_id is not None:
        query = query.where(Contact.id != exclude_id)
    return list(db.session.execute(query.order_by(Contact.id).limit(5)).scalars())


def create_contact(values: dict, *, actor: User) -> Contact:
    """Create a contact from cleaned values and audit it."""
    contact = Contact(**{key: values[key] for key in EDITABLE})
    db.session.add(contact)
    db.session.flush()
    record_change(
        "contact.created",
        "contact",
        contact.id,
        {key: [None, values[key]] for key in EDITABLE if values[key] is not None},
        actor=actor,
    )
    return contact


def update_contact(contact: Contact, values: dict, *, actor: User) -> Contact:
    """Apply cleaned values to a contact and audit the fields that changed."""
    changes = diff(contact, {key: values[key] for key in EDITABLE})
    if changes:
        for key in changes:
            setattr(contact, key, values[key])
        db.session.flush()
        record_change("contact.updated", "contact", contact.id, changes, actor=actor)
    return contact
