"""Coach payouts: a coach's Stripe Connect status, onboarding, and the way back from Stripe.

A coach sees and starts only their own (another coach's answers 404); staff and admins
see every coach's and may start it for them. Stripe sends the coach back to
`connect_return` when they leave onboarding, or to `connect_refresh` when the link was
used or expired: that one makes a new link at once.
"""

from __future__ import annotations

from flask import abort, flash, make_response, redirect, request, url_for
from flask_login import current_user, login_required

from crm.auth.access import STAFF_ROLES
from crm.extensions import db
from crm.htmx import redirect_303, render
from crm.integrations.health import missing_settings
from crm.payments import connect
from crm.payments.services import PaymentError, stripe_configured
from crm.payments.views import bp
from crm.users.models import User

TEMPLATE = "payments/connect.html"


def _coach_or_404(user_id: int) -> User:
    """The coach, when the current user may see their payouts: themself, or staff."""
    if current_user.role not in STAFF_ROLES and current_user.id != user_id:
        abort(404)
    coach = db.session.get(User, user_id)
    if coach is None or coach.role != "coach":
        abort(404)
    return coach


def _page(coach: User, *, notice: str | None = None, error: str | None = None, status=200):
    return render(
        TEMPLATE,
        "payout_status",
        status=status,
        coach=coach,
        account=connect.account_for(coach),
        configured=stripe_configured(),
        missing=missing_settings("stripe"),
        own=current_user.id == coach.id,
        notice=notice,
        error=error,
    )


def _external_redirect(target: str, *, after_post: bool):
    """Send the browser to Stripe; htmx cannot follow another site, so it navigates."""
    if request.htmx:
        response = make_response("", 200)
        response.headers["HX-Redirect"] = target
        response.vary.add("HX-Request")
        return response
    return redirect_303(target) if after_post else redirect(target)


@bp.route("/coaches/<int:user_id>/connect", methods=["GET", "POST"], endpoint="connect")
@login_required
def connect_page(user_id: int):
    """Show a coach's payout status; POST starts or resumes onboarding at Stripe."""
    coach = _coach_or_404(user_id)
    if request.method == "GET":
        return _page(coach)
    try:
        target = connect.start_onboarding(coach, actor=current_user)
    except PaymentError as exc:
        # Keep an account Stripe already made (only its link failed): the next try reuses it.
        db.session.commit()
        if request.htmx:
            return _page(coach, error=str(exc))
        flash(str(exc), "error")
        return redirect_303(url_for("payments.connect", user_id=coach.id))
    db.session.commit()
    return _external_redirect(target, after_post=True)


@bp.get("/coaches/<int:user_id>/connect/return")
@login_required
def connect_return(user_id: int):
    """Back from Stripe's onboarding: read the account's state and show it."""
    coach = _coach_or_404(user_id)
    account = connect.account_for(coach)
    if account is None:
        return redirect(url_for("payments.connect", user_id=coach.id))
    try:
        connect.refresh_account(account)
    except PaymentError as exc:
        db.session.rollback()
        flash(str(exc), "error")
    else:
        db.session.commit()
        if account.ready:
            flash("Payouts are set up: payments for your sessions go to your account.", "success")
        elif account.details_submitted:
            flash("Details received. Stripe is still checking them.", "success")
        else:
            flash("Onboarding is not finished yet.", "warning")
    return redirect(url_for("payments.connect", user_id=coach.id))


@bp.get("/coaches/<int:user_id>/connect/refresh")
@login_required
def connect_refresh(user_id: int):
    """The onboarding link was used or expired: make a new one and go back to Stripe."""
    coach = _coach_or_404(user_id)
    try:
        target = connect.start_onboarding(coach, actor=current_user)
    except PaymentError as exc:
        db.session.commit()  # as in connect_page: an account already made is kept
        flash(str(exc), "error")
        return redirect(url_for("payments.connect", user_id=coach.id))
    db.session.commit()
    return _external_redirect(target, after_post=False)
