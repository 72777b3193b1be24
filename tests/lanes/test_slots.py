import threading

import pytest

from lanes.models import Lane
from lanes.slots import LaneSlots
from tests.conftest import wait_until


@pytest.mark.django_db
def test_waiting_jobs_get_a_slot_by_priority_then_arrival(demo_lanes):
    lane = Lane.objects.get(name="fast-draft")
    lane.max_concurrency = 1
    lane.save()
    slots, order = LaneSlots(), []

    def job(name: str, priority: str) -> None:
        with slots.acquire(lane.pk, priority):
            order.append(name)

    def waiting() -> int:
        return slots.waiting(lane.pk)

    with slots.acquire(lane.pk, "standard"):  # the lane's one slot is busy
        threads = []
        for name, priority in [
            ("bg", "background"),
            ("std-1", "standard"),
            ("crit", "critical"),
            ("std-2", "standard"),
        ]:
            threads.append(threading.Thread(target=job, args=(name, priority)))
            threads[-1].start()
            wait_until(lambda: waiting() == len(threads), what=f"{name} waiting for the slot")  # arrive in this order
        assert order == []
    for thread in threads:
        thread.join(10)
    assert order == ["crit", "std-1", "std-2", "bg"]
