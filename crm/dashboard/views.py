from __future__ import annotations

from flask import Blueprint
from flask_login import current_user, login_required

from crm.audit.models import AuditEntry
from crm.auth.access import STAFF_ROLES, scope_contacts
from crm.contacts.models import Contact
from crm.extensions import db
from crm.htmx import render
from crm.users.models import User

bp = Blueprint("dashboard", __name__)


@bp.get("/")
@login_required
def index():
    """Home: what the signed-in user looks after, and recent activity for staff."""
    visible = scope_contacts(db.select(Contact).where(Contact.deleted_at.is_(None)), current_user)
    contact_count = db.session.execute(
        db.select(db.func.count()).select_from(visible.subquery())
    ).scalar_one()
    recent_contacts = list(
        db.session.execute(visible.order_by(Contact.created_at.desc()).limit(5)).scalars()
    )
    activity = []
    user_count = None
    if current_user.role in STAFF_ROLES:
        activity = list(
            db.session.execute(
                db.select(AuditEntry).order_by(AuditEntry.created_at.desc()).limit(8)
            ).scalars()
        )
        user_count = db.session.execute(
            db.select(db.func.count(User.id)).filter_by(active=True)
        ).scalar_one()
    return render(
        "dashboard/index.html",
        contact_count=contact_count,
        recent_contacts=recent_contacts,
        activity=activity,
        user_count=user_count,
    )
