"""The data dir's files are its user's alone: an old data dir is tightened, a symbolic link's target is not
touched (it may be outside the data dir), and files written later are private whatever they were before."""

import stat
from pathlib import Path

from fleetflow.local import natslogins, private


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_an_old_data_dir_is_tightened_but_what_a_link_points_to_is_left_alone(tmp_path: Path) -> None:
    data_dir, outside = tmp_path / "data", tmp_path / "shared.sqlite3"
    (data_dir / "logs").mkdir(parents=True)
    (data_dir / "logs" / "writer.log").write_text("x")
    outside.write_text("x")
    (data_dir / "store.sqlite3").symlink_to(outside)
    for path, loose in ((data_dir, 0o755), (data_dir / "logs", 0o777), (data_dir / "logs" / "writer.log", 0o644),
                        (outside, 0o644)):  # fmt: skip
        path.chmod(loose)
    private.make_private(data_dir)
    assert [mode(data_dir), mode(data_dir / "logs"), mode(data_dir / "logs" / "writer.log")] == [0o700, 0o700, 0o600]
    assert mode(outside) == 0o644


def test_a_new_data_dir_and_files_written_into_it_are_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "new" / "data"
    private.make_private(data_dir)
    assert mode(data_dir) == 0o700
    endpoints = data_dir / "endpoints.json"
    endpoints.write_text("{}")
    endpoints.chmod(0o644)
    private.write_private(endpoints, '{"nats": {}}')
    assert (mode(endpoints), endpoints.read_text()) == (0o600, '{"nats": {}}')
    with private.open_private_log(data_dir / "logs" / "nats-server.log") as log:
        log.write(b"started\n")
    assert (mode(data_dir / "logs"), mode(data_dir / "logs" / "nats-server.log")) == (0o700, 0o600)


def test_each_user_gets_a_password_once_per_data_dir(tmp_path: Path) -> None:
    first = natslogins.ensure_passwords(tmp_path)
    assert sorted(first) == sorted(natslogins.USERS) and len(set(first.values())) == len(first)
    assert natslogins.ensure_passwords(tmp_path) == first, "a restart keeps the passwords"
    for user in natslogins.USERS:
        assert mode(natslogins.password_file(tmp_path, user)) == 0o600
    assert mode(tmp_path / "secrets") == mode(tmp_path / "secrets" / "nats") == 0o700
    assert natslogins.admin_login(tmp_path).password == first[natslogins.ADMIN]
