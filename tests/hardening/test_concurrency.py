"""8 clients through smbd for 30 s (the CI size of bench/soak/concurrency.py, whose
docstring lists what is checked): spec-correct IN_PROGRESS on collisions, mutual
exclusion of the context, no deadlock, no stuck timer, a consistent end state and
bounded agent RSS growth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.soak.concurrency import run_workers
from tests.hardening.harness import Stack

pytestmark = pytest.mark.root

SECONDS = 30
TIMER = 3.0


def test_eight_clients_mixed_sequences(clean_stack: Stack, tmp_path: Path) -> None:
    st = clean_stack
    st.agent.stop()
    st.agent.sequence_timeout = TIMER
    st.agent.start()
    try:
        summary = run_workers(st, SECONDS, 8, tmp_path, seed=1, timer=TIMER, abandon_p=0.01)
    finally:
        st.agent.stop()
        st.agent.sequence_timeout = 30
        st.agent.start()
    print(json.dumps(summary, indent=2))
    assert summary["n_errors"] == 0, summary["errors"]
    counts = summary["counts"]
    assert counts.get("set_context_in_progress", 0) > 0  # sets did collide
    assert counts.get("full", 0) >= 8 and counts.get("abort", 0) >= 1
    assert summary["max_call_s"] < 30
