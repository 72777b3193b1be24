"""Off-peak windows of lanes: cron-like schedules in the deployment's time zone.

A window opens at each time its cron line names (five fields: minute, hour, day of month,
month, day of week, read by Celery's own `crontab`, as beat reads them) in its time zone,
and stays open `minutes`. It is open at `now` exactly when its next opening after
`now - minutes` is not after `now`. Two modes:

- `background-only`: while open, the lane takes background briefs only; others go to its
  fallback, or are refused until the window closes.
- `release`: the lane's "scheduled pool". Background briefs that arrive while no release
  window is open are deferred (off-peak), and released, with work a team's soft quota
  deferred, while one is open.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery.schedules import crontab
from django.utils import timezone

from .models import Lane, LaneWindow

Mode = LaneWindow.Mode
# Overlap is checked over this many days ahead (a year: monthly and yearly schedules meet too), and at most
# this many openings of one window (a window that opens every minute has shown its overlap long before).
OVERLAP_HORIZON = timedelta(days=366)
OVERLAP_MAX_OPENINGS = 2000


class WindowError(ValueError):
    pass


def schedule(cron: str) -> crontab:
    """Celery's crontab for a five-field cron line; WindowError saying what is wrong."""
    fields = (cron or "").split()
    if len(fields) != 5:
        raise WindowError(f"cron {cron!r} needs five fields (minute hour day-of-month month day-of-week)")
    try:
        return crontab.from_string(" ".join(fields))
    except (ValueError, KeyError, IndexError) as exc:
        raise WindowError(f"cron {cron!r}: {exc}") from None


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise WindowError(f"time zone {name!r} does not exist") from None


def next_opening(cron: crontab, tz: ZoneInfo, after: datetime) -> datetime:
    """The first opening strictly after `after`."""
    start, delta, _ = cron.remaining_delta(after.astimezone(tz), tz=tz)
    return start + delta


@dataclass(frozen=True)
class Opening:
    window: LaneWindow
    opens: datetime
    closes: datetime


def current(window: LaneWindow, now: datetime | None = None) -> Opening | None:
    """The window's opening that holds `now`, if it is open."""
    now = now or timezone.now()
    length = timedelta(minutes=window.minutes)
    opens = next_opening(schedule(window.cron), zone(window.zone_name), now - length)
    return Opening(window, opens, opens + length) if opens <= now else None


def upcoming(window: LaneWindow, now: datetime | None = None) -> Opening:
    now = now or timezone.now()
    opens = next_opening(schedule(window.cron), zone(window.zone_name), now)
    return Opening(window, opens, opens + timedelta(minutes=window.minutes))


def lane_windows(lane: Lane) -> list[LaneWindow]:
    # Prefetched by pages that list them; otherwise one query.
    return list(lane.windows.all())


def open_window(lane: Lane, mode: str, now: datetime | None = None) -> Opening | None:
    for window in lane_windows(lane):
        if window.mode == mode:
            opening = current(window, now)
            if opening is not None:
                return opening
    return None


def next_window(lane: Lane, mode: str | None = None, now: datetime | None = None) -> Opening | None:
    """The lane's next window (of `mode`, or any) to open after `now`; None if it has none."""
    openings = [upcoming(w, now) for w in lane_windows(lane) if mode is None or w.mode == mode]
    return min(openings, key=lambda o: o.opens) if openings else None


def has_release_windows(lane: Lane) -> bool:
    return any(w.mode == Mode.RELEASE for w in lane_windows(lane))


def check(specs: list[tuple[str, int, str]], now: datetime | None = None) -> list[tuple[int, str, int | None]]:
    """Problems with one lane's windows, given as (cron, minutes, time zone name): a cron line or zone
    that does not exist, an empty window, or two openings that overlap (the same window's included).
    Each is (index of the window, message, index of the window it overlaps or None)."""
    now = now or timezone.now()
    problems: list[tuple[int, str, int | None]] = []
    intervals: list[tuple[datetime, datetime, int]] = []
    for index, (cron, minutes, tz_name) in enumerate(specs):
        try:
            parsed, tz = schedule(cron), zone(tz_name)
        except WindowError as exc:
            problems.append((index, str(exc), None))
            continue
        if minutes is None or minutes < 1:
            problems.append((index, "the window is empty: it must last at least 1 minute", None))
            continue
        moment, end = now, now + OVERLAP_HORIZON
        for _ in range(OVERLAP_MAX_OPENINGS):
            moment = next_opening(parsed, tz, moment)
            if moment > end:
                break
            intervals.append((moment, moment + timedelta(minutes=minutes), index))
    intervals.sort(key=lambda item: item[0])
    reported: set[tuple[int, int]] = set()
    open_until: dict[int, tuple[datetime, datetime]] = {}  # window -> its latest opening seen so far
    for start, finish, index in intervals:
        for other, (other_start, other_end) in open_until.items():
            pair = (min(index, other), max(index, other))
            if start < other_end and pair not in reported:
                reported.add(pair)
                when = f"both open at {start.astimezone(other_start.tzinfo):%Y-%m-%d %H:%M}"
                if index == other:
                    problems.append((index, f"the window overlaps itself ({when})", None))
                else:
                    problems.append((pair[1], f"the window overlaps another ({when})", pair[0]))
        open_until[index] = (start, finish)
    return problems
