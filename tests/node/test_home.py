from __future__ import annotations

import stat
from pathlib import Path

import pytest

from node.home import Config, Home, HomeError


def test_config_round_trips_through_toml() -> None:
    config = Config(
        name='st "marys"',
        listen="/ip4/0.0.0.0/tcp/4001",
        bootstrap=["/ip4/10.0.0.2/tcp/4001/p2p/12D3KooWx"],
        metrics_port=9100,
        dht=True,
    )
    assert Config.from_toml(config.to_toml()) == config


def test_home_is_private_and_sequence_numbers_survive_reopening(tmp_path: Path) -> None:
    home = Home.init(tmp_path / "alice", "alice")
    assert stat.S_IMODE(home.path.stat().st_mode) == 0o700
    assert [home.next_seq(), home.next_seq()] == [0, 1]
    assert Home(tmp_path / "alice").next_seq() == 2
    with pytest.raises(HomeError, match="no network"):
        home.genesis()
    with pytest.raises(HomeError, match="not a medforge home"):
        Home(tmp_path / "nobody").identity()
