"""The shipped demo detector's incidents as a scoreboard (issue 26): floors below bench/demo_scoreboard.py's figures."""

from __future__ import annotations

import pytest

from bench.demo_scoreboard import scoreboard


@pytest.mark.slow
def test_the_shipped_demo_catches_its_incidents_at_the_promised_rate() -> None:
    # The same code and seed measure differently on different CPUs (their float kernels differ); the floors
    # hold on both measured so far: AMD EPYC (974f314) and Intel Xeon (2f7e8c3), bench/results/demo_scoreboard.md.
    # Since the first window is judged at the wide scale too (AMD EPYC, 22984a7): first run 100 / 100 / 94.6 %
    # for spikes, bursts and CPU, memory leaks 82.9 %, drops and misroutes 66 %; next week memory leaks 84.1 %.
    # Not yet measured on the Intel Xeon, so the floors stay those both CPUs met before.
    (first, fresh), _ = scoreboard()
    for board in (first, fresh):
        assert board.unseen_normal == 0                   # 3xx occurs in normal records: never marked unseen
        assert board.flagged["none"] <= 0.015             # records with no incident: at most 1.5x the 1 % target
    # live records, scored by the first model: every kind but the memory leak's ramp at >= 90 % (AMD 97-100 %,
    # Intel 96-100 %; memory leaks 73.9 % and 67.4 %)
    for kind in ("latency_spike", "error_burst", "cpu_decoupled", "traffic_drop", "region_misroute"):
        assert fresh.flagged[kind] >= 0.9, kind
    assert fresh.flagged["memory_leak"] >= 0.6
    # the first run scores the window it trained on: incidents the screen left in it vouch for each other
    # (AMD: spikes, bursts and CPU 94-96 %, the others 59-71 %; Intel: 91-95 %, 44-67 %)
    for kind in ("latency_spike", "error_burst", "cpu_decoupled"):
        assert first.flagged[kind] >= 0.85, kind
    for kind in ("traffic_drop", "region_misroute"):
        assert first.flagged[kind] >= 0.5, kind
    assert first.flagged["memory_leak"] >= 0.35
