"""The contact page: profile, tags, notes, change history and the timeline."""

from __future__ import annotations

from flask_login import current_user, login_required

from crm.contacts.listing import get_visible_or_404
from crm.contacts.views import bp
from crm.htmx import render


@bp.get("/<int:contact_id>")
@login_required
def show(contact_id: int):
    """Show one contact; a coach gets 404 for another coach's client."""
    return render("contacts/show.html", contact=get_visible_or_404(contact_id, current_user))
