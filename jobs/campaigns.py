"""Campaign jobs: give every contact of a campaign its recipient row and message, resumably.

`run_campaign` walks the audience in contact id order, a batch at a time. Each batch
commits its recipient rows and their messages together, and `queue_message` enqueues the
send jobs after that commit, so a run that dies loses only the batch it was in; the unique
(campaign, contact) pair and the "no recipient row yet" filter make any rerun skip what is
done. One run at a time holds a campaign (a Redis lock that expires with the messaging
lease should its worker die); `resume_campaigns`, called by the periodic sweep, restarts
runs that died part-way and marks finished campaigns done.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import sqlalchemy as sa
from flask import current_app
from redis.exceptions import LockError
from sqlalchemy.orm import lazyload

from crm.contacts.models import Contact
from crm.conversations import campaigns, services
from crm.conversations.models import Campaign, CampaignRecipient, OptOut
from crm.database import utcnow
from crm.extensions import db
from crm.redis_client import get_redis
from jobs import get_queue, messaging

log = logging.getLogger(__name__)

QUEUE = "messaging"
BATCH_SIZE = 500
# Preparing 10,000 recipients takes well under a minute; allow far more.
RUN_OPTIONS = {"job_timeout": 3600, "failure_ttl": 7 * 24 * 3600}


def _lease_seconds() -> float:
    return float(current_app.config.get("MESSAGING_LEASE_SECONDS", 120))


def _lock_name(campaign_id: int) -> str:
    return f"rapport:campaign-run:{campaign_id}"


def _hold(campaign_id: int, status: str = "running") -> bool:
    """Open the transaction with a write to the campaign's row, if it is still `status`.

    On SQLite a transaction that reads first and writes later fails when a send job
    committed in between; writing first takes the write lock up front. On PostgreSQL the
    row lock orders a batch and a cancellation: whichever comes second sees the other.
    """
    return bool(
        db.session.execute(
            sa.update(Campaign)
            .where(Campaign.id == campaign_id, Campaign.status == status)
            .values(recipient_count=Campaign.recipient_count)
            .execution_options(synchronize_session=False)
        ).rowcount
    )


def run_campaign(campaign_id: int, batch_size: int = BATCH_SIZE) -> int:
    """Prepare the campaign's recipients and queue their messages; return how many it added."""
    lock = get_redis().lock(_lock_name(campaign_id), timeout=_lease_seconds())
    if not lock.acquire(blocking=False):
        log.info("campaign %s: another run is preparing it", campaign_id)
        return 0
    try:
        return _prepare(campaign_id, batch_size, lock)
    finally:
        try:
            lock.release()
        except LockError:
            pass  # it expired during a long batch; nothing else to let go of


def _start(campaign_id: int) -> Campaign | None:
    """Mark the campaign running (from scheduled, or again after a crash)."""
    if not (_hold(campaign_id, "scheduled") or _hold(campaign_id, "running")):
        db.session.rollback()
        return None
    campaign = db.session.get(Campaign, campaign_id, populate_existing=True)
    campaign.status = "running"
    if campaign.started_at is None:
        campaign.started_at = utcnow()
    db.session.commit()
    return campaign


def _prepare(campaign_id: int, batch_size: int, lock) -> int:
    campaign = _start(campaign_id)
    if campaign is None:
        log.info("campaign %s: not found, finished or cancelled", campaign_id)
        return 0
    if campaign.template is None or services.twilio_missing():
        # Left running: the sweep's resume_campaigns tries again; cancelling ends it.
        log.warning("campaign %s: no template or Twilio settings; nothing prepared", campaign_id)
        return 0
    added, after = 0, 0
    while True:
        batch = _batch(campaign_id, after=after, size=batch_size)
        if batch is None:
            log.info("campaign %s: cancelled after %d recipient(s)", campaign_id, added)
            return added
        count, after = batch
        if not count:
            break
        added += count
        if not _keep(lock):
            log.warning("campaign %s: another run took over after %d", campaign_id, added)
            return added
    if _hold(campaign_id):
        campaigns.refresh_campaign_status(
            db.session.get(Campaign, campaign_id, populate_existing=True)
        )
    db.session.commit()
    log.info("campaign %s: %d recipient(s) prepared", campaign_id, added)
    return added


def _keep(lock) -> bool:
    """Extend the run's lock for another batch; False when another run holds it now."""
    try:
        lock.extend(_lease_seconds(), replace_ttl=True)
        return True
    except LockError:
        return lock.acquire(blocking=False)


def _batch(campaign_id: int, *, after: int, size: int) -> tuple[int, int] | None:
    """Prepare up to `size` recipients past contact id `after`; None once cancelled.

    Return (recipients added, the last contact id handled).
    """
    if not _hold(campaign_id):
        db.session.rollback()
        return None
    campaign = db.session.get(Campaign, campaign_id, populate_existing=True)
    ids = db.session.scalars(
        campaigns.unprepared(campaign)
        .with_only_columns(Contact.id)
        .where(Contact.id > after)
        .order_by(Contact.id)
        .limit(size)
    ).all()
    if not ids:
        db.session.rollback()
        return 0, after
    contacts = db.session.scalars(
        sa.select(Contact)
        .where(Contact.id.in_(ids))
        .order_by(Contact.id)
        .options(lazyload(Contact.tags))
    ).all()
    opted_out = set(
        db.session.scalars(
            sa.select(OptOut.contact_id).where(
                OptOut.contact_id.in_(ids), OptOut.channel == campaign.channel
            )
        )
    )
    now = utcnow()
    queued: list = []
    for contact in contacts:
        reason = campaigns.skip_reason(contact, campaign.channel, opted_out=contact.id in opted_out)
        message_id = None
        if reason is None:
            try:
                message = services.queue_message(
                    services.open_conversation(contact, campaign.channel),
                    template=campaign.template,
                    actor=campaign.created_by,
                    campaign_id=campaign.id,
                    send_at=campaigns.send_time(campaign, contact, now=now),
                    enqueue=False,
                )
                message_id = message.id
                queued.append(message)
            except services.SendRefused as exc:
                reason = str(exc)
        db.session.add(
            CampaignRecipient(
                campaign_id=campaign.id,
                contact_id=contact.id,
                message_id=message_id,
                skip_reason=reason[:200] if reason else None,
            )
        )
        # Now, not inside the next conversation's savepoint, should the row clash.
        db.session.flush()
    campaign.recipient_count += len(contacts)
    messaging.enqueue_sends_after_commit(queued)
    db.session.commit()  # the send jobs are enqueued after this
    return len(contacts), ids[-1]


def resume_campaigns() -> int:
    """Restart the run of each campaign whose preparation stopped part-way; finish the rest.

    A run holds its campaign's lock while alive, so a campaign with no lock and contacts
    still without a recipient row lost its run (a worker died). A campaign just created
    is left alone: its first run is likely still queued. Return how many were restarted.
    """
    redis = get_redis()
    now = utcnow()
    lease = _lease_seconds()
    restart: list[int] = []
    finished: list[int] = []
    active = db.session.scalars(
        sa.select(Campaign).where(Campaign.status.in_(campaigns.ACTIVE)).order_by(Campaign.id)
    ).all()
    for campaign in active:
        if redis.exists(_lock_name(campaign.id)):
            continue
        if campaign.status == "scheduled":
            if campaign.created_at > now - timedelta(seconds=lease):
                continue
            restart.append(campaign.id)
        elif not campaigns.prepared(campaign):
            restart.append(campaign.id)
        else:
            finished.append(campaign.id)
    db.session.rollback()
    restarted = 0
    for campaign_id in restart:
        # Once per lease: a run still waiting in a long queue is not enqueued again each sweep.
        if redis.set(f"rapport:campaign-resume:{campaign_id}", 1, nx=True, px=int(lease * 1000)):
            get_queue(QUEUE).enqueue(run_campaign, campaign_id, **RUN_OPTIONS)
            restarted += 1
    for campaign_id in finished:
        if _hold(campaign_id):
            campaigns.refresh_campaign_status(
                db.session.get(Campaign, campaign_id, populate_existing=True)
            )
        db.session.commit()
    if restarted:
        log.info("resumed %d campaign run(s)", restarted)
    return restarted
