"""`memrun worker join`'s env file: what systemd reads back is what the join answered."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from memrun.errors import ConfigError
from tests.fixtures.bootstrap import env_file_read
from worker_daemon.join import env_file_write


def test_the_env_file_is_0600_and_reads_back_exactly(tmp_path: Path) -> None:
    env = {
        "MEMRUN_SERVICE_CONFIG": json.dumps({"name": 'a "quoted" $HOME `x` \\ path'}),
        "REDIS_URL": "redis://user:p$ss@127.0.0.1:6379/0",
        "EMPTY": "",
    }
    path = tmp_path / "etc" / "worker.env"
    env_file_write(path=path, env=env)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert env_file_read(path) == env
    assert [p.name for p in path.parent.iterdir()] == ["worker.env"]


@pytest.mark.parametrize("env", [{"BAD NAME": "x"}, {"OK": "two\nlines"}])
def test_what_systemd_cannot_read_is_refused_and_nothing_written(
    tmp_path: Path, env: dict[str, str]
) -> None:
    path = tmp_path / "worker.env"
    with pytest.raises(ConfigError):
        env_file_write(path=path, env=env)
    assert not path.exists()
