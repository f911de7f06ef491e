"""The budget ledger: what may be spent today, reserved, settled and released, to the micro-dollar.

Policy
- A global daily budget (`IMAGEGEN_DAILY_BUDGET_USD`, default $500) and a per-user daily
  limit per tier (`IMAGEGEN_USER_DAILY_LIMIT_PAID_USD` $50, `..._FREE_USD` $2). The day
  runs midnight to midnight in `IMAGEGEN_BUDGET_TIMEZONE` (UTC default; an IANA name or a
  fixed offset such as `+05:30`); all of a job's money is booked on the day it was scheduled.
- Committed money = reserved + spent. A job is admitted all-or-nothing: the estimate of
  every image (cheapest offer of its chain) is reserved at once if it fits both the global
  budget and the user's limit, else the job ends `failed` with `budget_exceeded` or
  `user_budget_exceeded`. A failover to a dearer offer and a consistency variation reserve
  their extra cost the same way, or the image fails.
- The generator's actual cost settles a reservation (spent += actual, reserved -= estimate);
  a failed or cancelled image releases it. A cost reported after its reservation was released
  (an image that finished while its job was being cancelled) is still spent: money is counted
  where it went. When an attempt ran twice, the copy that was stored sets the cost
  (`settle_stored`).
- `budget_alert` is emitted once per day and threshold (80 %, 100 % of committed money), with
  an id derived from the day and threshold.

Concurrency: every change locks the day's row (`budget_days`) and then the user's day row, in
that order, inside the caller's transaction; totals there always equal the sums of
`ledger_entries`, which `balance()` checks.

The roles live apart: `reservations.py` (reserve, adjust, release), `settlements.py`
(settle, settle_stored) and `day_totals.py` (the day rows, entries, alerts, `balance`);
`Ledger` puts them behind one object for the handlers.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from services.scheduler.day_totals import DayTotals, budget_day
from services.scheduler.reservations import Reservations
from services.scheduler.settings import SchedulerSettings
from services.scheduler.settlements import Settlements


class Ledger:
    """Reservations, settlements and the day's totals of one budget, behind one object."""

    def __init__(self, settings: SchedulerSettings, events_topic: str) -> None:
        self._settings = settings
        totals = DayTotals(settings, events_topic)
        reservations = Reservations(settings, totals)
        settlements = Settlements(totals)
        self.reserve = reservations.reserve
        self.adjust = reservations.adjust
        self.release = reservations.release
        self.settle = settlements.settle
        self.settle_stored = settlements.settle_stored
        self.settle_stored_copy = settlements.settle_stored_copy

    def today(self, now: datetime | None = None) -> date:
        return budget_day(now or datetime.now(UTC), self._settings.budget_timezone)
