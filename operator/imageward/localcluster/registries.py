"""Real distribution registries (Debian's `docker-registry` 2.8) on loopback ports.

Three variants, because the operator must handle each the way real registries behave:

- `anonymous`: plain HTTP, no auth (a local mirror, kind's registry);
- `htpasswd`: Basic auth (a small self-hosted registry);
- `token`: Bearer tokens from a separate issuer (Docker Hub, GHCR, Harbor, Quay):
  401 challenge -> token endpoint -> retry, with per-repository grants and public
  repositories anonymous callers may pull.

Each instance has its own work directory (config, log) and storage, and starts in well
under a second; `stop()` stops the process (and the token issuer) and removes the
directories the registry created. Storage defaults to a fresh directory on tmpfs
(/dev/shm): distribution fsyncs every blob it commits, which costs ~40 ms per blob on
this disk and ~8 ms on tmpfs, and a 60-layer image pushes 180 requests.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import pathlib
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

import yaml

from imageward.localcluster import images, processes, tokenissuer

REGISTRY_BINARY = pathlib.Path("/usr/bin/docker-registry")
HTPASSWD_BINARY = pathlib.Path("/usr/bin/htpasswd")

Kind = Literal["anonymous", "htpasswd", "token"]

#: Repositories anyone may pull from in the token variant.
DEFAULT_PUBLIC_REPOSITORIES = ("public/*",)

_PORT_ATTEMPTS = 3  # free_port() can race with another process taking the port


class RegistryStartError(RuntimeError):
    """A registry or its token issuer did not come up; carries the log tail."""


@dataclasses.dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str


class Registry:
    """One running registry. Use as a context manager or call `stop()`.

    `host` is "127.0.0.1:PORT" (what image references and containerd use), `url` the
    base URL, `credentials` the main account (None for the anonymous variant).
    """

    def __init__(
        self,
        *,
        kind: Kind,
        host: str,
        dirs: _Dirs,
        process: processes.ManagedProcess,
        credentials: Credentials | None = None,
        accounts: Mapping[str, tokenissuer.Account] | None = None,
        token_issuer: tokenissuer.TokenIssuer | None = None,
    ) -> None:
        self.kind = kind
        self.host = host
        self.url = f"http://{host}"
        self.workdir = dirs.workdir
        self.storage_dir = dirs.storage
        self.process = process
        self.credentials = credentials
        self.accounts: Mapping[str, tokenissuer.Account] = dict(accounts or {})
        self.token_issuer = token_issuer
        self._dirs = dirs

    def __repr__(self) -> str:
        return f"<Registry {self.kind} {self.host}>"

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return int(self.host.rsplit(":", 1)[1])

    @property
    def log_path(self) -> pathlib.Path:
        return self.process.log_path

    def log_tail(self, max_bytes: int = 4000) -> str:
        return self.process.log_tail(max_bytes)

    def client(
        self, credentials: Credentials | None = None, *, anonymous: bool = False
    ) -> images.RegistryClient:
        """A client with `credentials`, else the registry's own, or none if `anonymous`."""
        chosen = None if anonymous else (credentials or self.credentials)
        return images.RegistryClient(
            self.host,
            username=chosen.username if chosen else None,
            password=chosen.password if chosen else None,
        )

    def docker_config(self, credentials: Credentials | None = None) -> dict[str, Any]:
        """A `.dockerconfigjson` document for this registry (for pull secrets and the CLI)."""
        chosen = credentials or self.credentials
        if chosen is None:
            return {"auths": {}}
        pair = f"{chosen.username}:{chosen.password}".encode()
        entry = {
            "username": chosen.username,
            "password": chosen.password,
            "auth": base64.b64encode(pair).decode("ascii"),
        }
        return {"auths": {self.host: entry}}

    def stop(self) -> None:
        """Stop the registry and its token issuer; idempotent."""
        self.process.stop()
        if self.token_issuer is not None:
            self.token_issuer.stop()
        self._dirs.remove()


def _registry_config(
    *,
    port: int,
    storage: pathlib.Path,
    auth: Mapping[str, Any] | None,
    address: str = "127.0.0.1",
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},  # tests delete manifests and tags
            "cache": {"blobdescriptor": "inmemory"},
            # The purger would only walk an empty tree on a throw-away registry.
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {
            "addr": f"{address}:{port}",
            "secret": secrets.token_hex(16),  # else the registry warns and makes one up
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        },
    }
    if auth:
        config["auth"] = dict(auth)
    return config


def _registry_env() -> dict[str, str]:
    # REGISTRY_* variables override the config file; a developer's shell must not leak in.
    return {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}


def htpasswd_line(username: str, password: str) -> str:
    """One bcrypt htpasswd line (the only hash distribution's htpasswd auth accepts)."""
    result = subprocess.run(
        [str(HTPASSWD_BINARY), "-Bbn", username, password],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return result.stdout.strip()


def _launch(
    kind: Kind,
    *,
    dirs: _Dirs,
    auth: Mapping[str, Any] | None,
    startup_timeout: float,
    address: str = "127.0.0.1",
) -> tuple[str, processes.ManagedProcess]:
    """Write a config and start the registry on a free port; retry if the port was taken."""
    workdir, storage = dirs.workdir, dirs.storage
    for attempt in range(_PORT_ATTEMPTS):
        port = processes.free_port()
        config_path = workdir / "config.yml"
        config = _registry_config(port=port, storage=storage, auth=auth, address=address)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        process = processes.ManagedProcess(
            f"registry-{kind}",
            [str(REGISTRY_BINARY), "serve", str(config_path)],
            log_dir=workdir,
            env=_registry_env(),
            grace=5.0,
        )
        process.start()
        try:
            # /v2/ answers 200 (anonymous) or 401 (auth): either proves it serves.
            processes.wait_for_http(
                f"http://{address}:{port}/v2/",
                timeout=startup_timeout,
                expect_status=(200, 401),
                process=process,
            )
        except processes.ProcessExitedError as e:
            process.stop()
            if "address already in use" in process.log_tail() and attempt + 1 < _PORT_ATTEMPTS:
                continue
            raise RegistryStartError(f"{kind} registry failed to start: {e}") from e
        except TimeoutError as e:
            process.stop()
            raise RegistryStartError(
                f"{kind} registry did not answer: {e}\nlog tail:\n{process.log_tail()}"
            ) from e
        return f"{address}:{port}", process
    raise AssertionError("unreachable")  # the loop returns or raises


def _tmpfs() -> pathlib.Path | None:
    shm = pathlib.Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


@dataclasses.dataclass(frozen=True, slots=True)
class _Dirs:
    """Where a registry keeps its config and log (`workdir`) and its blobs (`storage`)."""

    workdir: pathlib.Path
    storage: pathlib.Path
    own_workdir: bool
    own_storage: bool

    @classmethod
    def make(
        cls, kind: Kind, workdir: pathlib.Path | None, storage_dir: pathlib.Path | None
    ) -> _Dirs:
        own_workdir = workdir is None
        if workdir is None:
            workdir = pathlib.Path(tempfile.mkdtemp(prefix=f"imageward-registry-{kind}-"))
        workdir.mkdir(parents=True, exist_ok=True)
        own_storage = storage_dir is None
        if storage_dir is None:
            storage_dir = pathlib.Path(
                tempfile.mkdtemp(prefix=f"imageward-registry-{kind}-", dir=_tmpfs())
            )
        storage_dir.mkdir(parents=True, exist_ok=True)
        return cls(workdir, storage_dir, own_workdir, own_storage)

    def remove(self) -> None:
        if self.own_storage:
            shutil.rmtree(self.storage, ignore_errors=True)
        if self.own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_anonymous(
    *,
    workdir: pathlib.Path | None = None,
    storage_dir: pathlib.Path | None = None,
    startup_timeout: float = 10.0,
    address: str = "127.0.0.1",
) -> Registry:
    """A registry anyone can pull from and push to, over plain HTTP.

    `address`: where it listens. 127.0.0.1 is this machine only; pods of the real node
    reach it at the node's address (`realnode.RealNode.node_ip`), as an in-cluster
    registry: then image references name that address, for the kubelet and pods alike."""
    dirs = _Dirs.make("anonymous", workdir, storage_dir)
    try:
        host, process = _launch(
            "anonymous", dirs=dirs, auth=None, startup_timeout=startup_timeout, address=address
        )
    except BaseException:
        dirs.remove()
        raise
    return Registry(kind="anonymous", host=host, dirs=dirs, process=process)


def start_htpasswd(
    *,
    users: Mapping[str, str] | None = None,
    workdir: pathlib.Path | None = None,
    storage_dir: pathlib.Path | None = None,
    startup_timeout: float = 10.0,
) -> Registry:
    """A registry with Basic auth; `users` maps name to password (first one = credentials).

    Without `users`, one user "imageward" with a random password.
    """
    users = dict(users) if users else {"imageward": secrets.token_urlsafe(12)}
    dirs = _Dirs.make("htpasswd", workdir, storage_dir)
    try:
        htpasswd = dirs.workdir / "htpasswd"
        htpasswd.write_text("".join(htpasswd_line(u, p) + "\n" for u, p in users.items()))
        host, process = _launch(
            "htpasswd",
            dirs=dirs,
            auth={"htpasswd": {"realm": "imageward-local", "path": str(htpasswd)}},
            startup_timeout=startup_timeout,
        )
    except BaseException:
        dirs.remove()
        raise
    username, password = next(iter(users.items()))
    return Registry(
        kind="htpasswd",
        host=host,
        dirs=dirs,
        process=process,
        credentials=Credentials(username, password),
        accounts={u: tokenissuer.Account(password=p) for u, p in users.items()},
    )


def default_token_accounts() -> dict[str, tokenissuer.Account]:
    """imageward: everything; reader: pull only; team-a: push to team-a/* only."""
    return {
        "imageward": tokenissuer.Account(password=secrets.token_urlsafe(12)),
        "reader": tokenissuer.Account(password=secrets.token_urlsafe(12), write=(), read=("*",)),
        "team-a": tokenissuer.Account(
            password=secrets.token_urlsafe(12), write=("team-a/*",), catalog=False
        ),
    }


def start_token(
    *,
    accounts: Mapping[str, tokenissuer.Account] | None = None,
    public_repositories: Sequence[str] = DEFAULT_PUBLIC_REPOSITORIES,
    token_ttl: int = 300,
    workdir: pathlib.Path | None = None,
    storage_dir: pathlib.Path | None = None,
    startup_timeout: float = 10.0,
) -> Registry:
    """A registry with Bearer-token auth and its own token issuer.

    `accounts` default to `default_token_accounts()`; the first is the credentials.
    Anonymous callers may pull from `public_repositories` and nothing else. Note that
    distribution accepts a token up to 60 s past its `exp` (clock-skew leeway).
    """
    accounts = dict(accounts) if accounts else default_token_accounts()
    dirs = _Dirs.make("token", workdir, storage_dir)
    issuer = tokenissuer.TokenIssuer(
        accounts=accounts, public_repositories=public_repositories, ttl=token_ttl
    )
    try:
        issuer.start()
        bundle = issuer.write_root_cert_bundle(dirs.workdir / "token-root.pem")
        host, process = _launch(
            "token",
            dirs=dirs,
            auth={
                "token": {
                    "realm": issuer.realm,
                    "service": issuer.service,
                    "issuer": issuer.issuer,
                    "rootcertbundle": str(bundle),
                }
            },
            startup_timeout=startup_timeout,
        )
    except BaseException:
        issuer.stop()
        dirs.remove()
        raise
    username, account = next(iter(accounts.items()))
    return Registry(
        kind="token",
        host=host,
        dirs=dirs,
        process=process,
        credentials=Credentials(username, account.password),
        accounts=accounts,
        token_issuer=issuer,
    )


def start(kind: Kind, *, workdir: pathlib.Path | None = None) -> Registry:
    """Start one variant with its defaults."""
    if kind == "anonymous":
        return start_anonymous(workdir=workdir)
    if kind == "htpasswd":
        return start_htpasswd(workdir=workdir)
    if kind == "token":
        return start_token(workdir=workdir)
    raise ValueError(f"unknown registry kind {kind!r}")


@dataclasses.dataclass(slots=True)
class Registries:
    """The three variants together; iterate to get each."""

    anonymous: Registry
    htpasswd: Registry
    token: Registry

    def __iter__(self) -> Iterator[Registry]:
        return iter((self.anonymous, self.htpasswd, self.token))

    def __enter__(self) -> Registries:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        for registry in self:
            registry.stop()


def start_all(*, workdir: pathlib.Path | None = None) -> Registries:
    """Start all three variants (in `workdir/<kind>` when given); stops them all on failure."""
    started: list[Registry] = []
    kinds: tuple[Kind, ...] = ("anonymous", "htpasswd", "token")
    try:
        for kind in kinds:
            started.append(start(kind, workdir=workdir / kind if workdir else None))
    except BaseException:
        for registry in started:
            registry.stop()
        raise
    return Registries(*started)
