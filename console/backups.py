"""Backups of a Laneway installation, and their restore.

An archive is one .tar.gz: the database (the embedded SQLite copied through its online backup
API, which is consistent while the console writes; PostgreSQL through `pg_dump --format=custom`),
the files under MEDIA_ROOT (rendered images, smoke images), and a manifest.json written last.
MODELS_ROOT is never in one: checkpoints are large, and whoever registered them keeps them.

A restore unpacks and checks everything (manifest, checksum, database vendor, migrations, the dump
itself) before it changes anything; then the media move in with the old files set aside, and the
database is replaced in one transaction; if that fails, the old media move back.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import tomllib
import zlib
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from django.apps import apps
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder
from django.utils import timezone

FORMAT = "laneway-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATABASE_MEMBERS = {"sqlite": "database/laneway.sqlite3", "postgresql": "database/laneway.pgdump"}
MEDIA_PREFIX = "media/"
# Working folders of a restore, inside MEDIA_ROOT so that moving files in and out is a rename.
STAGING_PREFIX = ".laneway-restore-"
NOT_INCLUDED = (
    "MODELS_ROOT (checkpoints and LoRA files): large, and kept by whoever registered them; "
    "back them up on their own and restore them to the same paths."
)
# The apps whose rows make a database "in use": restoring over one needs --yes.
DATA_APPS = ("accounts", "telemetry", "webhooks", "lanes", "experiments")
MANIFEST_MAX_BYTES = 1_000_000


class BackupError(Exception):
    """A backup or restore that cannot go on; the message says why, and nothing was changed."""


@dataclass
class Restored:
    manifest: dict
    media_files: int
    unapplied_migrations: list[str] = field(default_factory=list)


# Backup.


def backup(output: Path | None = None, *, media: bool = True, using: str = "default") -> tuple[Path, dict]:
    """Write an archive (default: BACKUP_DIR/laneway-backup-YYYYmmdd-HHMMSS.tar.gz); its path and manifest."""
    connection = connections[using]
    vendor = connection.vendor
    if vendor not in DATABASE_MEMBERS:
        raise BackupError(f"Backups support SQLite and PostgreSQL; this database is {vendor}.")
    created = timezone.now()
    output = output or Path(settings.BACKUP_DIR) / f"laneway-backup-{created:%Y%m%d-%H%M%S}.tar.gz"
    if output.exists():
        raise BackupError(f"{output} exists already; not overwriting it.")
    output.parent.mkdir(parents=True, exist_ok=True)
    migrations = applied_migrations(connection)
    # The dump sits beside the archive while it is written: /tmp may be too small for a database.
    with tempfile.TemporaryDirectory(prefix=".laneway-backup-", dir=output.parent) as work:
        member = DATABASE_MEMBERS[vendor]
        dump = Path(work) / PurePosixPath(member).name
        tool = dump_sqlite(connection, dump) if vendor == "sqlite" else dump_postgres(connection, dump)
        partial = output.with_name(output.name + ".part")
        try:
            with tarfile.open(partial, "w:gz") as tar:
                tar.add(dump, member)
                files, size = add_media(tar) if media else (0, 0)
                manifest = {
                    "format": FORMAT,
                    "format_version": FORMAT_VERSION,
                    "laneway_version": laneway_version(),
                    "created_at": created.isoformat(),
                    "database": {
                        "vendor": vendor,
                        "member": member,
                        "sha256": sha256_of(dump),
                        "size_bytes": dump.stat().st_size,
                        "made_with": tool,
                    },
                    "migrations": migrations,
                    "media": {"included": media, "files": files, "bytes": size},
                    "not_included": NOT_INCLUDED,
                }
                add_bytes(tar, MANIFEST, json.dumps(manifest, indent=2).encode())
            os.replace(partial, output)
        finally:
            partial.unlink(missing_ok=True)
    return output, manifest


def dump_sqlite(connection: BaseDatabaseWrapper, dump: Path) -> str:
    source = Path(connection.settings_dict["NAME"])
    if not source.is_file():
        raise BackupError(f"No SQLite database at {source}.")
    timeout = connection.settings_dict.get("OPTIONS", {}).get("timeout", 20)
    # The online backup API copies a consistent snapshot while the web server and workers write (WAL).
    with closing(sqlite3.connect(source, timeout=timeout)) as src, closing(sqlite3.connect(dump)) as dst:
        src.backup(dst)
        # One self-contained file: no -wal or -shm companion needed to read it.
        dst.execute("PRAGMA journal_mode=DELETE")
    return f"SQLite {sqlite3.sqlite_version} online backup API"


def dump_postgres(connection: BaseDatabaseWrapper, dump: Path) -> str:
    pg_dump, _, _ = postgres_tools(connection)
    run([pg_dump, "--format=custom", f"--file={dump}"], libpq_env(connection), "pg_dump")
    return tool_version(pg_dump)


def add_media(tar: tarfile.TarFile) -> tuple[int, int]:
    """Every regular file under MEDIA_ROOT (not links, not half-written .part files, not MODELS_ROOT)."""
    root = Path(settings.MEDIA_ROOT)
    models = Path(settings.MODELS_ROOT).resolve()
    files = size = 0
    for folder, subfolders, names in os.walk(root):
        here = Path(folder)
        subfolders[:] = sorted(
            name
            for name in subfolders
            if not name.startswith(STAGING_PREFIX) and not (here / name).resolve().is_relative_to(models)
        )
        for name in sorted(names):
            path = here / name
            if name.endswith(".part") or path.is_symlink():
                continue
            try:
                with path.open("rb") as file:
                    info = tar.gettarinfo(arcname=MEDIA_PREFIX + path.relative_to(root).as_posix(), fileobj=file)
                    if not info.isfile():
                        continue
                    tar.addfile(info, file)
            except FileNotFoundError:
                continue  # pruned while the backup ran
            files += 1
            size += info.size
    return files, size


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(timezone.now().timestamp()), 0o644
    tar.addfile(info, io.BytesIO(data))


def applied_migrations(connection: BaseDatabaseWrapper) -> list[str]:
    return sorted(f"{app}.{name}" for app, name in MigrationRecorder(connection).applied_migrations())


def laneway_version() -> str:
    try:
        return tomllib.loads((Path(settings.BASE_DIR) / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# PostgreSQL's client tools.

LIBPQ_SETTINGS = {"HOST": "PGHOST", "PORT": "PGPORT", "USER": "PGUSER", "PASSWORD": "PGPASSWORD", "NAME": "PGDATABASE"}
LIBPQ_OPTIONS = {
    "sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY",
    "sslcrl": "PGSSLCRL", "passfile": "PGPASSFILE", "service": "PGSERVICE", "options": "PGOPTIONS",
    "connect_timeout": "PGCONNECT_TIMEOUT", "application_name": "PGAPPNAME",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
}  # fmt: skip


def libpq_env(connection: BaseDatabaseWrapper) -> dict[str, str]:
    """The connection's settings as libpq's environment: a password never shows in a process list."""
    env = dict(os.environ)
    settings_dict = connection.settings_dict
    for key, variable in LIBPQ_SETTINGS.items():
        if settings_dict.get(key):
            env[variable] = str(settings_dict[key])
    for key, variable in LIBPQ_OPTIONS.items():
        if settings_dict.get("OPTIONS", {}).get(key) not in (None, ""):
            env[variable] = str(settings_dict["OPTIONS"][key])
    return env


def tool_version(binary: str) -> str:
    try:
        answer = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BackupError(f"{binary} does not run: {exc}") from None
    return answer.stdout.strip()


def major_version(binary: str) -> int:
    found = re.search(r"\)\s+(\d+)", tool_version(binary))
    if not found:
        raise BackupError(f"Cannot read the version of {binary}.")
    return int(found.group(1))


def postgres_tools(connection: BaseDatabaseWrapper) -> tuple[str, str, str]:
    """pg_dump, pg_restore and psql of at least the server's major version: from POSTGRES_BIN_DIR when
    set, else PATH, else Debian's /usr/lib/postgresql/<major>/bin."""
    connection.ensure_connection()
    server = connection.pg_version // 10000  # type: ignore[attr-defined]
    if settings.POSTGRES_BIN_DIR:
        folders = [settings.POSTGRES_BIN_DIR]
    else:
        folders = [os.environ.get("PATH", ""), f"/usr/lib/postgresql/{server}/bin"]
    tools = []
    for name in ("pg_dump", "pg_restore", "psql"):
        found = [path for folder in folders if (path := shutil.which(name, path=folder))]
        if not found:
            where = settings.POSTGRES_BIN_DIR or "PATH"
            raise BackupError(
                f"{name} is not installed (looked in {where}): install the PostgreSQL {server} client tools "
                "or set POSTGRES_BIN_DIR."
            )
        usable = [path for path in found if major_version(path) >= server]
        if not usable:
            raise BackupError(
                f"{found[0]} is version {major_version(found[0])}; the server is PostgreSQL {server}. Install "
                f"the PostgreSQL {server} client tools or point POSTGRES_BIN_DIR at them."
            )
        tools.append(usable[0])
    return tools[0], tools[1], tools[2]


def run(command: list[str], env: dict[str, str], what: str) -> str:
    answer = subprocess.run(command, env=env, capture_output=True, text=True)
    if answer.returncode:
        raise BackupError(f"{what} failed (exit {answer.returncode}): {answer.stderr.strip()[-2000:]}")
    return answer.stdout


# Restore.


def restore(archive: Path, *, replace: bool = False, using: str = "default") -> Restored:
    """Replace the database (and MEDIA_ROOT, when the archive holds media) with an archive's.
    Refuses a database that holds data unless `replace`."""
    if not archive.is_file():
        raise BackupError(f"No archive at {archive}.")
    connection = connections[using]
    media_root = Path(settings.MEDIA_ROOT)
    media_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=media_root))
    try:
        manifest = unpack(archive, staging)
        dump = staging / "database" / PurePosixPath(manifest["database"]["member"]).name
        check(archive, manifest, staging, dump, connection)
        tools = postgres_tools(connection) if connection.vendor == "postgresql" else None
        dump_tables = check_dump(dump, tools)
        if not replace and holds_data(connection):
            raise BackupError(
                f"The database ({database_label(connection)}) already holds data: pass --yes to replace it "
                "with the archive's (and MEDIA_ROOT with its images)."
            )
        swap = MediaSwap(media_root, staging / "media", staging / "old")
        if manifest["media"]["included"]:
            swap.do()
        try:
            if tools is None:
                restore_sqlite(dump, connection)
            else:
                restore_postgres(dump, connection, tools, dump_tables, staging)
        except BaseException:
            swap.undo()  # the database is as it was: so are the media
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    connection.close()
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    unapplied = [f"{migration.app_label}.{migration.name}" for migration, _ in plan]
    return Restored(manifest, manifest["media"]["files"] if manifest["media"]["included"] else 0, unapplied)


def unpack(archive: Path, staging: Path) -> dict:
    """Extract the database and media into staging and return the manifest; only our own members,
    only regular files, nothing outside staging."""
    manifest = None
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = member.name
                if name == MANIFEST and member.isfile() and member.size <= MANIFEST_MAX_BYTES:
                    source = tar.extractfile(member)
                    assert source is not None
                    manifest = source.read()
                    continue
                if name in DATABASE_MEMBERS.values() or name.startswith(MEDIA_PREFIX):
                    relative = PurePosixPath(name)
                    if member.isfile() and ".." not in relative.parts and not relative.is_absolute():
                        target = staging.joinpath(*relative.parts)
                        target.parent.mkdir(parents=True, exist_ok=True)
                        source = tar.extractfile(member)
                        assert source is not None
                        with target.open("wb") as file:
                            shutil.copyfileobj(source, file)
                        continue
                raise BackupError(f"{archive} is not a Laneway backup: it holds {name!r}.")
            # tarfile stops quietly at a header it cannot read: reading the compressed stream to its end
            # checks its length and CRC, so a damaged archive is never taken for a short one.
            while tar.fileobj is not None and tar.fileobj.read(1 << 20):
                pass
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise BackupError(f"{archive} is damaged or not a Laneway backup ({type(exc).__name__}: {exc}).") from None
    if manifest is None:
        raise BackupError(f"{archive} is not a Laneway backup: it has no {MANIFEST}.")
    try:
        parsed = json.loads(manifest)
        if parsed.get("format") != FORMAT:
            raise ValueError
    except (ValueError, AttributeError):
        raise BackupError(f"{archive} is not a Laneway backup: its {MANIFEST} is not one of ours.") from None
    if not well_formed(parsed):
        raise BackupError(f"{archive} is damaged: its {MANIFEST} lacks fields a restore needs.")
    return parsed


def well_formed(manifest: dict) -> bool:
    database, media = manifest.get("database"), manifest.get("media")
    return (
        isinstance(database, dict)
        and all(isinstance(database.get(key), str) for key in ("vendor", "member", "sha256"))
        and isinstance(media, dict)
        and isinstance(media.get("included"), bool)
        and all(type(media.get(key)) is int for key in ("files", "bytes"))
        and isinstance(manifest.get("migrations"), list)
        and all(isinstance(name, str) for name in manifest["migrations"])
    )


def check(archive: Path, manifest: dict, staging: Path, dump: Path, connection: BaseDatabaseWrapper) -> None:
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BackupError(
            f"{archive} is format {manifest.get('format_version')!r}; this Laneway reads format {FORMAT_VERSION}."
        )
    vendor = manifest["database"]["vendor"]
    if vendor != connection.vendor:
        raise BackupError(
            f"{archive} holds a {vendor} database; this Laneway uses {connection.vendor}. Restore it where "
            f"DATABASE_URL points at {vendor}."
        )
    if manifest["database"]["member"] != DATABASE_MEMBERS[vendor] or not dump.is_file():
        raise BackupError(f"{archive} is damaged: its database dump is missing.")
    if sha256_of(dump) != manifest["database"]["sha256"]:
        raise BackupError(f"{archive} is damaged: the database dump does not match its checksum.")
    media = staging / "media"
    files = [path for path in media.rglob("*") if path.is_file()] if media.exists() else []
    expected = manifest["media"]
    if (len(files), sum(path.stat().st_size for path in files)) != (expected["files"], expected["bytes"]):
        raise BackupError(
            f"{archive} is damaged: it holds {len(files)} media files, its manifest lists {expected['files']}."
        )
    known = {f"{app}.{name}" for app, name in MigrationLoader(None, ignore_no_migrations=True).disk_migrations}
    newer = sorted(set(manifest["migrations"]) - known)
    if newer:
        raise BackupError(
            f"{archive} was made by a newer Laneway ({manifest.get('laneway_version')}): this one does not have "
            f"the migrations {', '.join(newer)}. Upgrade Laneway, then restore."
        )


def check_dump(dump: Path, tools: tuple[str, str, str] | None) -> set[str]:
    """Read the dump through its own tool before anything is replaced; the tables it holds."""
    if tools is None:
        try:
            with closing(sqlite3.connect(f"{dump.resolve().as_uri()}?mode=ro", uri=True)) as db:
                verdict = db.execute("PRAGMA integrity_check").fetchone()[0]
                tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise BackupError(f"The archive's database does not open: {exc}.") from None
        if verdict != "ok":
            raise BackupError(f"The archive's database fails its integrity check: {verdict}.")
    else:
        listing = run([tools[1], "--list", str(dump)], dict(os.environ), "pg_restore --list")
        tables = set(re.findall(r"^\d+; \d+ \d+ TABLE \S+ (\S+) ", listing, re.MULTILINE))
    if "django_migrations" not in tables:
        raise BackupError("The archive's database is not a Laneway database (it has no django_migrations table).")
    return tables


def holds_data(connection: BaseDatabaseWrapper) -> bool:
    tables = set(connection.introspection.table_names())
    models = [model for model in apps.get_models() if model._meta.app_label in DATA_APPS] + [get_user_model()]
    return any(
        model._meta.db_table in tables and model._default_manager.using(connection.alias).exists() for model in models
    )


def database_label(connection: BaseDatabaseWrapper) -> str:
    settings_dict = connection.settings_dict
    if connection.vendor == "sqlite":
        return str(settings_dict["NAME"])
    return f"{settings_dict['NAME']} on {settings_dict.get('HOST') or 'localhost'}"


class MediaSwap:
    """MEDIA_ROOT's top-level entries set aside and the archive's moved in, by renames within one file
    system (so MEDIA_ROOT may be a mount point); undo() puts every moved entry back where it was."""

    def __init__(self, media_root: Path, new: Path, aside: Path) -> None:
        self.media_root, self.new, self.aside = media_root, new, aside
        self.moved_out: list[str] = []
        self.moved_in: list[str] = []

    def do(self) -> None:
        self.aside.mkdir()
        models = Path(settings.MODELS_ROOT).resolve()
        try:
            for entry in sorted(self.media_root.iterdir()):
                # Checkpoints are never in an archive: a MODELS_ROOT inside MEDIA_ROOT stays where it is.
                if not entry.name.startswith(STAGING_PREFIX) and not models.is_relative_to(entry.resolve()):
                    os.replace(entry, self.aside / entry.name)
                    self.moved_out.append(entry.name)
            for entry in sorted(self.new.iterdir()) if self.new.exists() else []:
                if (self.media_root / entry.name).exists():
                    raise BackupError(
                        f"MEDIA_ROOT/{entry.name} holds MODELS_ROOT, and the archive has media there too: "
                        "move MODELS_ROOT out of MEDIA_ROOT to restore."
                    )
                os.replace(entry, self.media_root / entry.name)
                self.moved_in.append(entry.name)
        except BaseException:
            self.undo()
            raise

    def undo(self) -> None:
        self.new.mkdir(exist_ok=True)
        for name in reversed(self.moved_in):
            os.replace(self.media_root / name, self.new / name)
        for name in reversed(self.moved_out):
            os.replace(self.aside / name, self.media_root / name)
        self.moved_in, self.moved_out = [], []


def restore_sqlite(dump: Path, connection: BaseDatabaseWrapper) -> None:
    target = Path(connection.settings_dict["NAME"])
    target.parent.mkdir(parents=True, exist_ok=True)
    timeout = connection.settings_dict.get("OPTIONS", {}).get("timeout", 20)
    connection.close()
    # Through the backup API, into the configured file: one write transaction that other processes'
    # connections see whole (or not at all), never a file swapped under them.
    try:
        with closing(sqlite3.connect(dump)) as src, closing(sqlite3.connect(target, timeout=timeout)) as dst:
            src.backup(dst)
    except sqlite3.Error as exc:
        raise BackupError(f"Could not write {target}: {exc}; it is unchanged.") from None


def restore_postgres(
    dump: Path, connection: BaseDatabaseWrapper, tools: tuple[str, str, str], dump_tables: set[str], staging: Path
) -> None:
    _, pg_restore, psql = tools
    env = libpq_env(connection)
    # Tables the archive does not have (made by migrations newer than it) would be left behind, and
    # in the way of those migrations: they are dropped in the same transaction as the restore.
    leftover = sorted(set(connection.introspection.table_names()) - dump_tables)
    connection.close()
    script = staging / "restore.sql"
    run([pg_restore, "--clean", "--if-exists", "--no-owner", "--no-privileges", f"--file={script}", str(dump)], env,
        "pg_restore")  # fmt: skip
    prelude = staging / "prelude.sql"
    prelude.write_text("".join(f"DROP TABLE IF EXISTS {connection.ops.quote_name(t)} CASCADE;\n" for t in leftover))
    run([psql, "--no-psqlrc", "--quiet", "--single-transaction", "--set=ON_ERROR_STOP=1", f"--file={prelude}",
         f"--file={script}"], env, "psql (restoring the dump)")  # fmt: skip
