"""The pages' formatting filters (apps/web/templatetags/memrun_ui.py)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.web.templatetags.memrun_ui import age, ago, elapsed, ranges


@pytest.mark.parametrize(
    ("seconds", "said"),
    [
        (-3, "0 s"),
        (0, "0 s"),
        (7, "7 s"),
        (59, "59 s"),
        (60, "1 min"),
        (3599, "59 min"),
        (3600 + 25 * 60, "1 h 25 min"),
        (3 * 86400 + 5, "3 d"),
    ],
)
def test_elapsed_keeps_seconds_while_under_a_minute(seconds: int, said: str) -> None:
    assert elapsed(seconds) == said


def test_ago_and_age_of_a_moment_and_of_none() -> None:
    assert ago(None) == "never"
    assert ago(timezone.now() - timedelta(hours=2, minutes=3)) == "2 h 3 min ago"
    assert age(timezone.now() - timedelta(days=4)) == "4 d"
    assert age(None) == "-"


def test_ranges_folds_runs() -> None:
    assert ranges([7, 0, 1, 2, 3]) == "0-3, 7"
    assert ranges([]) == "-"
