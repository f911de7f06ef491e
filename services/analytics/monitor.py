"""faust's Monitor without its once-a-second sampler.

faust's default sensor, the Monitor, counts per event inline and, in a task of its own,
wakes every second to turn the counts into rates (events/s, messages/s, medians of event
and rebalance latencies) for faust's web views. This service serves its own numbers (the
KPIs, /metrics) and runs with faust's web server off, so nobody reads those rates: the
sampler was one wake of the event loop a second at rest, for nothing. The counts and the
bounded latency histories stay as they were (faust updates them per event).
"""

from __future__ import annotations

from faust.sensors.monitor import Monitor
from mode import Service


class QuietMonitor(Monitor):
    """A Monitor that never samples rates (see the module docstring)."""

    @Service.task
    async def _sampler(self) -> None:
        """Replaces the sampling loop: returns at once, so no timer runs."""
