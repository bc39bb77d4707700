"""EMState: the first rank writes state.json; the others wait for its phases by polling the file."""

from __future__ import annotations

import threading
import time

import pytest

from ra3_megatron.em.loop import EMState
from ra3_megatron.errors import ConfigError, RA3Error

pytestmark = pytest.mark.unit


def test_a_reader_waits_for_the_writers_mark_and_takes_its_state(tmp_path):
    writer = EMState(tmp_path, {"model": "m"})
    reader = EMState(tmp_path, {"model": "m"}, writer=False)

    def finish_later():
        time.sleep(0.3)
        writer.mark("iter_1/data", 1.0, data={"iter_1": "d/train"})

    t = threading.Thread(target=finish_later)
    t.start()
    started = time.monotonic()
    reader.wait_for("iter_1/data", poll_s=0.05)
    t.join()
    assert time.monotonic() - started >= 0.25  # it did wait
    assert reader.done("iter_1/data") and reader.body["data"] == {"iter_1": "d/train"}


def test_the_wait_is_bounded_and_says_what_it_waited_for(tmp_path):
    EMState(tmp_path, {"model": "m"})
    reader = EMState(tmp_path, {"model": "m"}, writer=False)
    with pytest.raises(RA3Error, match="did not finish iter_1/data within 0 s"):
        reader.wait_for("iter_1/data", timeout_s=0.2, poll_s=0.05)


def test_another_configuration_is_refused_naming_what_differs(tmp_path):
    EMState(tmp_path, {"model": "m", "mstep": {"steps": 1}})
    with pytest.raises(ConfigError, match="mstep differ"):
        EMState(tmp_path, {"model": "m", "mstep": {"steps": 2}})


def test_a_failure_of_the_first_rank_stops_the_waiting_ranks_and_a_rerun_clears_it(tmp_path):
    writer = EMState(tmp_path, {"model": "m"})
    reader = EMState(tmp_path, {"model": "m"}, writer=False)
    with pytest.raises(ValueError, match="bad corpus"), writer.failure_recorded("iter_1/data", others_wait=True):
        raise ValueError("bad corpus")
    with pytest.raises(RA3Error, match="first rank failed in iter_1/data: ValueError: bad corpus"):
        reader.wait_for("iter_1/data", timeout_s=5, poll_s=0.05)
    EMState(tmp_path, {"model": "m"})  # the rerun's first rank
    with pytest.raises(RA3Error, match="did not finish"):  # waits again instead of failing at once
        EMState(tmp_path, {"model": "m"}, writer=False).wait_for("iter_1/data", timeout_s=0.2, poll_s=0.05)
