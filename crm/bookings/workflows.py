"""Workflow steps of a booking: confirmation, coach notification, reminders, follow-up.

PLACEHOLDER: the workflow helper replaces this module (see its brief). The interface:

    plan_steps(booking, *, reason)   # reason: booked | rescheduled | assigned | completed
    cancel_steps(booking, *, keep=())
"""

from __future__ import annotations


def plan_steps(booking, *, reason: str) -> None:
    """Plan (or re-plan) the booking's steps that are still to come."""


def cancel_steps(booking, *, keep: tuple[str, ...] = ()) -> None:
    """Cancel the booking's scheduled steps, except those named in `keep`."""
