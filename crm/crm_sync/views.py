"""Admin > CRM sync: resync every contact, with a progress fragment that polls itself."""

from __future__ import annotations

from flask import Blueprint, flash, request, url_for
from flask_login import current_user

from crm.auth.access import roles_required
from crm.contacts.models import Contact
from crm.crm_sync.services import SyncError, contact_sync_state, latest_run, start_resync
from crm.extensions import db
from crm.htmx import redirect_303, render
from crm.integrations import crm_sync_api

bp = Blueprint("crm_sync", __name__, url_prefix="/admin/crm-sync")


@bp.app_template_global("crm_sync_state")
def crm_sync_state(contact: Contact) -> dict:
    """The sync state the contact page shows; that page's view has already checked access."""
    return contact_sync_state(contact.id)


def _page(status: int = 200, **context):
    return render(
        "crm_sync/index.html",
        "progress",
        status=status,
        run=latest_run(),
        missing=crm_sync_api.missing_settings(),
        error=context.pop("error", None),
        **context,
    )


@bp.get("/")
@roles_required("admin")
def index():
    """The last resync and the button to start one; htmx polls the progress block."""
    return _page()


@bp.post("/resync")
@roles_required("admin")
def resync():
    """Start a resync of every live contact; refuse while one runs or sync is off."""
    try:
        start_resync(actor=current_user)
    except SyncError as exc:
        db.session.rollback()
        if request.htmx:
            return _page(error=exc.message)
        flash(exc.message, "warning")
        return redirect_303(url_for("crm_sync.index"))
    db.session.commit()
    if request.htmx:
        return _page()
    flash("Resync started.", "success")
    return redirect_303(url_for("crm_sync.index"))
