import queue
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


@pytest.mark.django_db
def test_a_job_standing_aside_keeps_still_between_two_critical_renders(demo_lanes, monkeypatch):
    """It goes on once no higher class renders or is about to: not in the gap between one critical job's
    render and the next one's, and not forever for a critical job that holds a slot without rendering."""
    from lanes import slots as slots_module

    lane, other = Lane.objects.get(name="fast-draft"), Lane.objects.get(name="final-render")
    Lane.objects.filter(pk=lane.pk).update(max_concurrency=3)
    Lane.objects.filter(pk=other.pk).update(max_concurrency=1)
    slots, done, got, finish = LaneSlots(), threading.Event(), queue.Queue(), threading.Event()
    monkeypatch.setattr(slots_module, "BETWEEN_RENDERS", 30.0)  # far longer than this test: the gap is seen, not timed

    def stand_aside(slot) -> None:
        slots.stand_aside(slot, until=float("inf"))
        done.set()

    def second_critical() -> None:
        with slots.acquire(other.pk, "critical") as slot:
            got.put(slot)
            finish.wait(10)

    with slots.acquire(lane.pk, "background") as background:
        with slots.acquire(other.pk, "background"):  # the other lane's one slot is busy (not with a higher class)
            with slots.acquire(lane.pk, "critical") as first:
                slots.rendering(first, True)
                thread = threading.Thread(target=stand_aside, args=(background,))
                thread.start()
                slots.rendering(first, False)  # its render ended; it still holds its slot (storing its image)
                assert not done.wait(0.3)
                second = threading.Thread(target=second_critical)
                second.start()
                wait_until(lambda: slots.waiting(other.pk) == 1, what="the second critical job waiting")
            assert not done.wait(0.3)  # the first one is done; the next waits for a slot
        slot = got.get(timeout=10)  # it has its slot and is about to render
        assert not done.wait(0.3)
        slots.rendering(slot, True)
        slots.rendering(slot, False)
        finish.set()
        second.join(10)
        assert done.wait(10)  # nothing of a higher class holds or waits for a slot: it goes on at once
        thread.join(10)

        # A critical job holding a slot but not rendering (waiting for memory, say) is waited for a bounded time.
        monkeypatch.setattr(slots_module, "BETWEEN_RENDERS", 0.2)
        done.clear()
        with slots.acquire(lane.pk, "critical") as third:
            slots.rendering(third, True)
            thread = threading.Thread(target=stand_aside, args=(background,))
            thread.start()
            slots.rendering(third, False)
            assert done.wait(10)
        thread.join(10)
