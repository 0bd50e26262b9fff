"""Message templates: list, create, edit and delete, with a live preview (staff only)."""

from __future__ import annotations

from flask import Blueprint, flash, request, url_for
from flask_login import current_user

from crm.auth.access import STAFF_ROLES, roles_required
from crm.contacts.models import Contact
from crm.conversations import campaigns, services
from crm.conversations.models import MessageTemplate
from crm.extensions import db
from crm.htmx import redirect_303, render
from crm.users.models import User

bp = Blueprint("message_templates", __name__, url_prefix="/message-templates")

INDEX = "message_templates/index.html"
FORM = "message_templates/form.html"


def _fragment_wanted() -> bool:
    return bool(request.htmx) and not request.htmx.boosted


def _sample_contact() -> Contact:
    """The contact a preview is rendered for: transient, never added to the session."""
    return Contact(
        name="Ana Silva",
        phone="+14155550123",
        email="ana.silva@example.com",
        owner=User(name=current_user.display_name),
    )


def _preview(body: str) -> dict:
    sample = _sample_contact()
    text = services.render_body(body, sample)
    return {
        "sample": sample,
        "text": text,
        "known": [
            ("{{" + name + "}}", services.VARIABLES[name])
            for name in services.template_variables(body)
            if name in services.VARIABLES
        ],
        "unknown": ["{{" + name + "}}" for name in campaigns.unknown_placeholders(body)],
        "segments": services.count_segments(text),
    }


def _form_page(
    message_template: MessageTemplate | None,
    values: dict | None = None,
    *,
    errors: dict | None = None,
    status: int = 200,
    block: str | None = "template_form",
):
    if values is None:
        values = {
            "name": message_template.name if message_template else "",
            "body": message_template.body if message_template else "",
            "content_sid": (message_template.content_sid or "") if message_template else "",
        }
    return render(
        FORM,
        block,
        status=status,
        message_template=message_template,
        values=values,
        errors=errors or {},
        preview=_preview(values["body"]),
        variables=[("{{" + name + "}}", label) for name, label in services.VARIABLES.items()],
    )


def _read_form() -> dict:
    return {name: request.form.get(name, "") for name in ("name", "body", "content_sid")}


def _index_page(*, errors: dict | None = None, status: int = 200):
    templates = db.session.scalars(db.select(MessageTemplate).order_by(MessageTemplate.name))
    return render(
        INDEX,
        "template_table",
        status=status,
        message_templates=templates.all(),
        errors=errors or {},
        variables_of=services.template_variables,
    )


@bp.get("/")
@roles_required(*STAFF_ROLES)
def index():
    """List the message templates."""
    return _index_page()


@bp.get("/new")
@roles_required(*STAFF_ROLES)
def new():
    """The form for a new template."""
    return _form_page(None)


@bp.post("/")
@roles_required(*STAFF_ROLES)
def create():
    """Save a new template; unknown variables, a taken name or a bad Content SID are refused."""
    values = _read_form()
    try:
        message_template = campaigns.create_template(**values, actor=current_user)
    except campaigns.TemplateError as exc:
        return _form_page(None, values, errors=exc.errors, status=422)
    db.session.commit()
    flash(f"Saved the template “{message_template.name}”.", "success")
    return redirect_303(url_for("message_templates.index"))


@bp.get("/<int:template_id>/edit")
@roles_required(*STAFF_ROLES)
def edit(template_id: int):
    """The form to change a template."""
    return _form_page(db.get_or_404(MessageTemplate, template_id))


@bp.post("/<int:template_id>")
@roles_required(*STAFF_ROLES)
def update(template_id: int):
    """Save a template's changes, with the same checks as creating one."""
    message_template = db.get_or_404(MessageTemplate, template_id)
    values = _read_form()
    try:
        campaigns.update_template(message_template, **values, actor=current_user)
    except campaigns.TemplateError as exc:
        db.session.rollback()
        return _form_page(
            db.get_or_404(MessageTemplate, template_id), values, errors=exc.errors, status=422
        )
    db.session.commit()
    flash(f"Saved the template “{message_template.name}”.", "success")
    return redirect_303(url_for("message_templates.index"))


@bp.post("/<int:template_id>/delete")
@roles_required(*STAFF_ROLES)
def delete(template_id: int):
    """Remove a template; refused while a campaign that is still sending uses it."""
    message_template = db.get_or_404(MessageTemplate, template_id)
    name = message_template.name
    try:
        campaigns.delete_template(message_template, actor=current_user)
    except campaigns.TemplateError as exc:
        db.session.rollback()
        if _fragment_wanted():
            return _index_page(errors={template_id: exc.errors["template"]}, status=422)
        flash(exc.errors["template"], "error")
        return redirect_303(url_for("message_templates.index"))
    db.session.commit()
    if not _fragment_wanted():
        flash(f"Removed the template “{name}”.", "success")
    return redirect_303(url_for("message_templates.index"))


@bp.post("/preview")
@roles_required(*STAFF_ROLES)
def preview():
    """The body rendered for a sample contact, and the variables it uses (as typed)."""
    template_id = request.form.get("template_id", "")
    message_template = (
        db.get_or_404(MessageTemplate, int(template_id)) if template_id.isdigit() else None
    )
    return _form_page(message_template, _read_form(), block="preview")
