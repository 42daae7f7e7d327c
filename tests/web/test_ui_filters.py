"""The pages' formatting filters (apps/web/templatetags/memrun_ui.py)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.web.templatetags.memrun_ui import ago, ranges, seconds_ago


@pytest.mark.parametrize(
    ("seconds", "said"),
    [
        (-3, "0 s ago"),
        (0, "0 s ago"),
        (7, "7 s ago"),
        (59, "59 s ago"),
        (60, "1 min ago"),
        (3599, "59 min ago"),
        (3600 + 25 * 60, "1 h 25 min ago"),
        (3 * 86400 + 5, "3 d ago"),
    ],
)
def test_seconds_ago_keeps_seconds_while_under_a_minute(seconds: int, said: str) -> None:
    assert seconds_ago(seconds) == said


def test_ago_of_a_heartbeat_and_of_none() -> None:
    assert ago(None) == "never"
    assert ago(timezone.now() - timedelta(hours=2, minutes=3)) == "2 h 3 min ago"


def test_ranges_folds_runs() -> None:
    assert ranges([7, 0, 1, 2, 3]) == "0-3, 7"
    assert ranges([]) == "-"
