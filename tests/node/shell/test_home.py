from __future__ import annotations

import stat
from pathlib import Path

import pytest

from crypto import identity as identity_module
from crypto.errors import KeyFileError
from crypto.identity import WeakPassphrase
from node.errors import HomeError
from node.shell.home import PASSPHRASE_ENV, Config, Home


def test_config_round_trips_through_toml() -> None:
    config = Config(
        name='st "marys"',
        listen="/ip4/0.0.0.0/tcp/4001",
        bootstrap=["/ip4/10.0.0.2/tcp/4001/p2p/12D3KooWx"],
        metrics_port=9100,
        metrics_host="0.0.0.0",
        dht=False,
        announce=["/ip4/198.51.100.7/tcp/4001"],
    )
    assert Config.from_toml(config.to_toml()) == config


def test_peer_routing_is_on_unless_turned_off_and_announce_is_checked() -> None:
    assert Config.from_toml('name = "a"\n').dht is True  # members find each other by default
    assert "dht" not in Config(name="a").to_toml()
    with pytest.raises(HomeError, match="dht must be true or false"):
        Config.from_toml('name = "a"\ndht = "yes"\n')
    with pytest.raises(HomeError, match="not a multiaddr"):
        Config.from_toml('name = "a"\nannounce = ["198.51.100.7:4001"]\n')
    with pytest.raises(HomeError, match="names a peer id"):
        Config.from_toml('name = "a"\nannounce = ["/ip4/1.2.3.4/tcp/1/p2p/12D3KooWx"]\n')


def test_the_device_key_round_trips_and_a_malformed_one_is_refused() -> None:
    assert Config(name="a").device == "auto"
    assert "device" not in Config(name="a").to_toml()  # the default is not written
    for device in ("cpu", "cuda", "cuda:1", "mps"):
        config = Config(name="a", device=device)
        assert Config.from_toml(config.to_toml()) == config
    with pytest.raises(HomeError, match="device must be auto, cpu, cuda, cuda:N or mps"):
        Config.from_toml('name = "a"\ndevice = "gpu"\n')


def test_home_is_private_and_sequence_numbers_survive_reopening(tmp_path: Path) -> None:
    home = Home.init(tmp_path / "alice", "alice")
    assert stat.S_IMODE(home.path.stat().st_mode) == 0o700
    assert [home.next_seq(), home.next_seq()] == [0, 1]
    assert Home(tmp_path / "alice").next_seq() == 2
    with pytest.raises(HomeError, match="no network"):
        home.genesis()
    with pytest.raises(HomeError, match="not a medforge home"):
        Home(tmp_path / "nobody").identity()


def test_an_existing_seq_file_keeps_counting(tmp_path: Path) -> None:
    home = Home.init(tmp_path / "alice", "alice")
    (home.path / "seq").write_text("41\n")  # written by an earlier release: same format
    assert [home.next_seq(), home.next_seq()] == [41, 42]
    assert (home.path / "seq").read_text() == "43\n"


def test_a_damaged_seq_file_is_refused_not_restarted(tmp_path: Path) -> None:
    home = Home.init(tmp_path / "alice", "alice")
    for junk in ("", "seven\n", "-3\n"):
        (home.path / "seq").write_text(junk)
        with pytest.raises(HomeError, match="not a sequence number"):
            home.next_seq()  # restarting at 0 would reuse numbers: equivocation


def test_next_seq_clears_what_a_killed_writer_left(tmp_path: Path) -> None:
    home = Home.init(tmp_path / "alice", "alice")
    stale = home.path / ".tmp-seq-abandoned"
    stale.write_text("7\n")
    assert home.next_seq() == 0
    assert not stale.exists()
    assert sorted(p.name for p in home.path.iterdir()) == [
        "config.toml",
        "identity.pem",
        "seq",
        "seq.lock",
    ]


def test_encrypted_home_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(identity_module, "SCRYPT_N", 2**12)  # cost is test_identity's business
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse battery")
    home = Home.init(tmp_path / "alice", "alice")
    assert home.identity_path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert stat.S_IMODE(home.identity_path.stat().st_mode) == 0o600
    public = home.identity().public
    monkeypatch.delenv(PASSPHRASE_ENV)
    with pytest.raises(KeyFileError, match="is encrypted"):
        home.identity()
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse batterz")
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        home.identity()
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse battery")
    assert home.identity().public == public


def test_init_with_a_short_passphrase_makes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from node.cli import main

    monkeypatch.setenv(PASSPHRASE_ENV, "hunter2")
    with pytest.raises(WeakPassphrase, match=f"{PASSPHRASE_ENV}: .*at least 12 characters"):
        Home.init(tmp_path / "alice", "alice")
    assert not (tmp_path / "alice").exists()
    capsys.readouterr()
    assert main(["init", "--home", str(tmp_path / "bob"), "--name", "bob"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: WeakPassphrase: ${PASSPHRASE_ENV}: a key passphrase needs")
    assert not (tmp_path / "bob").exists()
