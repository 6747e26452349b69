"""The catalog: what datastores exist, what went into them, how each build went, which models were used.

SQLAlchemy 2.x ORM over `$KNN_EXPLORER_HOME/catalog.sqlite` in WAL mode (readers — the GUI — never
block the writer — a build). A datastore row is written only once its folder is complete, in the
same transaction as its documents, so the catalog never lists a half-built datastore. Interrupted
builds are visible through their `Build` row (status `running` with no live process, or `failed`).
"""
from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import (JSON, Float, ForeignKey, Integer, String, Text, create_engine, event, inspect, select,
                        text)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from ..home import data_home

REBUILD_HINT = "run `knn-explorer rebuild-catalog` to rebuild it from the datastore folders"


class CatalogError(Exception):
    """The catalog cannot be read or written; str() is one line and never holds an SQL statement."""


class CatalogDamaged(CatalogError):
    """The catalog file is not a readable SQLite database (random bytes, a damaged page)."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


# A build in one of these states left a folder that the next build of its name resumes.
UNFINISHED = ("running", "failed", "interrupted")


class Base(DeclarativeBase):
    pass


class DatastoreRow(Base):
    __tablename__ = "datastores"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    folder: Mapped[str] = mapped_column(String)
    model_name: Mapped[str] = mapped_column(String)
    model_fingerprint: Mapped[str] = mapped_column(String)
    tokenizer_fingerprint: Mapped[str] = mapped_column(String)
    key_site: Mapped[str] = mapped_column(String)
    dim: Mapped[int] = mapped_column(Integer)
    entries: Mapped[int] = mapped_column(Integer)
    index_kind: Mapped[str] = mapped_column(String)
    index_description: Mapped[str] = mapped_column(String)
    size_bytes: Mapped[int] = mapped_column(Integer)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    # What was applied after encoding: {"pca_dim", "prune_k", "input_dim", "entries_before", ...}; None: nothing
    compression: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # Sharded datastores: the Ray cluster that serves them ("local" or an address) and their shard
    # count; None for a datastore on this machine. `folder` is then the storage every node reaches.
    cluster: Mapped[str | None] = mapped_column(String, nullable=True)
    shards: Mapped[int | None] = mapped_column(Integer, nullable=True)

    @property
    def location(self) -> str:
        """Where the datastore lives, for lists: "this machine" or "Ray 'local' · 2 shards"."""
        if not self.cluster:
            return "this machine"
        return f"Ray '{self.cluster}' · {self.shards} shard{'s' if self.shards != 1 else ''}"

    documents: Mapped[list["DocumentRow"]] = relationship(
        back_populates="datastore", cascade="all, delete-orphan", order_by="DocumentRow.id"
    )


class DocumentRow(Base):
    __tablename__ = "documents"

    id: Mapped[int] = mapped_column(primary_key=True)
    datastore_id: Mapped[int] = mapped_column(ForeignKey("datastores.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String)
    size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    mtime: Mapped[float | None] = mapped_column(Float, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String, nullable=True)
    status: Mapped[str] = mapped_column(String)  # indexed | skipped
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    tokens: Mapped[int] = mapped_column(Integer, default=0)

    datastore: Mapped[DatastoreRow] = relationship(back_populates="documents")


class BuildRow(Base):
    __tablename__ = "builds"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String)  # the datastore name it builds
    folder: Mapped[str] = mapped_column(String)
    model_name: Mapped[str] = mapped_column(String)
    parameters: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String)  # running | complete | failed | cancelled
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    seconds: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # per phase
    started: Mapped[datetime] = mapped_column(default=utcnow)
    finished: Mapped[datetime | None] = mapped_column(nullable=True)


class ModelRow(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    spec: Mapped[str] = mapped_column(String, unique=True)
    name: Mapped[str] = mapped_column(String)
    fingerprint: Mapped[str] = mapped_column(String)
    last_used: Mapped[datetime] = mapped_column(default=utcnow)


class AdapterRow(Base):
    """A small trained part kept apart from its model (Memorizing Transformer gates, SPALM gate)."""

    __tablename__ = "adapters"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    kind: Mapped[str] = mapped_column(String)  # memtrf | spalm
    path: Mapped[str] = mapped_column(String)
    model_name: Mapped[str] = mapped_column(String)
    model_fingerprint: Mapped[str] = mapped_column(String)
    details: Mapped[dict] = mapped_column(JSON)  # layer, settings, training summary
    created: Mapped[datetime] = mapped_column(default=utcnow)


class EvaluationRow(Base):
    """One evaluation or sweep, kept so it can be listed, compared and overlaid later."""

    __tablename__ = "evaluations"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String)  # eval | sweep | compare (per-token details in a file)
    model_name: Mapped[str] = mapped_column(String)
    datastore: Mapped[str | None] = mapped_column(String, nullable=True)
    parameters: Mapped[dict] = mapped_column(JSON)
    results: Mapped[dict] = mapped_column(JSON)
    created: Mapped[datetime] = mapped_column(default=utcnow)


class FittedSettingsRow(Base):
    """kNN-LM's λ and T fitted for a datastore on held-out text (`core/evaluation/fit.py`); the latest
    row of a datastore is what the app and the CLI start kNN-LM from. Goes with its datastore."""

    __tablename__ = "fitted_settings"
    id: Mapped[int] = mapped_column(primary_key=True)
    datastore_id: Mapped[int] = mapped_column(ForeignKey("datastores.id", ondelete="CASCADE"), index=True)
    datastore: Mapped[str] = mapped_column(String)  # its name, as fitted
    model_name: Mapped[str] = mapped_column(String)
    lambda_: Mapped[float] = mapped_column("lambda", Float)
    temperature: Mapped[float] = mapped_column(Float)
    k: Mapped[int] = mapped_column(Integer)
    distance: Mapped[str] = mapped_column(String)  # exact | approximate
    tokens: Mapped[int] = mapped_column(Integer)
    ppl_lm: Mapped[float] = mapped_column(Float)
    ppl_before: Mapped[float | None] = mapped_column(Float, nullable=True)  # at lambda_before, temperature_before
    ppl_after: Mapped[float | None] = mapped_column(Float, nullable=True)  # at the fitted pair (None: infinite)
    lambda_before: Mapped[float] = mapped_column(Float)
    temperature_before: Mapped[float] = mapped_column(Float)
    heldout: Mapped[str] = mapped_column(String)  # the held-out text's path
    origin: Mapped[str] = mapped_column(String, default="fit")  # fit | shipped (the demo's, measured when made)
    grid: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # {"lambdas", "temperatures", "ppl": T × λ}
    created: Mapped[datetime] = mapped_column(default=utcnow)


class Catalog:
    """A handle on one catalog file. Use `with catalog.session() as s:` for a transaction."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path is not None else data_home() / "catalog.sqlite"
        # A home the user cannot write (a read-only mount, someone else's folder) can still be read:
        # the file is opened immutable (no locks, no WAL files to create), or, if there is none, an
        # empty in-memory catalog stands in. Writing then fails with a one-line reason.
        self.read_only = not _writable(self.path)
        if self.read_only:
            url = f"sqlite:///file:{quote(str(self.path))}?immutable=1&uri=true" if self.path.exists() else "sqlite://"
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{self.path}"
        self.engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(self.engine, "handle_error", self._one_line_error)
        if not self.read_only:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        with self.engine.connect() as connection:
            verdict = connection.execute(text("PRAGMA quick_check")).scalar()
        if verdict != "ok":
            raise CatalogDamaged(f"the catalog {self.path} is damaged ({verdict}); {REBUILD_HINT}")
        if not self.read_only or url == "sqlite://":
            Base.metadata.create_all(self.engine)
            _add_new_columns(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _one_line_error(self, context) -> None:
        """Every database error leaves the catalog as a CatalogError with a reason a person can act on."""
        cause = context.original_exception
        reason = " ".join(str(cause).split())
        if any(sign in reason for sign in ("file is not a database", "malformed", "disk image")):
            raise CatalogDamaged(f"the catalog {self.path} is damaged ({reason}); {REBUILD_HINT}") from cause
        if "readonly" in reason or "read-only" in reason:
            raise CatalogError(f"the catalog {self.path} is read-only, so nothing can be recorded in it") from cause
        if "locked" in reason or "busy" in reason:
            raise CatalogError(f"the catalog {self.path} is locked by another process; try again") from cause
        if "full" in reason:
            raise CatalogError(f"the disk holding the catalog {self.path} is full") from cause
        raise CatalogError(f"the catalog {self.path} could not be used ({reason})") from cause

    def session(self) -> Session:
        return self._sessions.begin()  # commits on success, rolls back on error

    # ---- datastores ------------------------------------------------------------------------
    def datastores(self) -> list[DatastoreRow]:
        with self._sessions() as s:
            rows = s.scalars(select(DatastoreRow).order_by(DatastoreRow.name)).all()
            for row in rows:
                _ = row.documents  # load while the session is open
            return list(rows)

    def datastore(self, name: str) -> DatastoreRow | None:
        with self._sessions() as s:
            row = s.scalars(select(DatastoreRow).where(DatastoreRow.name == name)).first()
            if row is not None:
                _ = row.documents
            return row

    def register_datastore(self, manifest: dict, folder: Path, documents: list[dict], skipped: list[dict],
                           size_bytes: int) -> DatastoreRow:
        with self.session() as s:
            row = DatastoreRow(
                name=manifest["name"], folder=str(folder), model_name=manifest["model"]["name"],
                model_fingerprint=manifest["model"]["fingerprint"],
                tokenizer_fingerprint=manifest["tokenizer_fingerprint"], key_site=manifest["key_site"]["module"],
                dim=manifest["dim"], entries=manifest["entries"], index_kind=manifest["index"]["kind"],
                index_description=manifest["index_description"], size_bytes=size_bytes,
                compression=manifest.get("compression"),
                cluster=manifest.get("cluster") if manifest.get("shards") else None,
                shards=len(manifest["shards"]) if manifest.get("shards") else None,
            )
            row.documents = [
                DocumentRow(path=d["path"], size=d["size"], mtime=d["mtime"], sha256=d["sha256"], status="indexed",
                            tokens=d["token_count"])
                for d in documents
            ] + [DocumentRow(path=d["path"], status="skipped", reason=d["reason"]) for d in skipped]
            s.add(row)
        return self.datastore(manifest["name"])

    def remove_datastore(self, name: str) -> DatastoreRow | None:
        with self.session() as s:
            row = s.scalars(select(DatastoreRow).where(DatastoreRow.name == name)).first()
            if row is not None:
                s.delete(row)
            return row

    # ---- builds ----------------------------------------------------------------------------
    def start_build(self, name: str, folder: Path, model_name: str, parameters: dict) -> int:
        with self.session() as s:
            build = BuildRow(name=name, folder=str(folder), model_name=model_name, parameters=parameters,
                             status="running")
            s.add(build)
            s.flush()
            return build.id

    def finish_build(self, build_id: int, status: str, error: str | None = None,
                     seconds: dict | None = None) -> None:
        with self.session() as s:
            build = s.get(BuildRow, build_id)
            build.status, build.error, build.seconds, build.finished = status, error, seconds, utcnow()

    def unfinished_builds(self, name: str | None = None) -> list[BuildRow]:
        """Builds that never completed and whose folder is still there to resume or clean up."""
        with self._sessions() as s:
            query = select(BuildRow).where(BuildRow.status.in_(UNFINISHED)).order_by(BuildRow.id.desc())
            if name is not None:
                query = query.where(BuildRow.name == name)
            latest = {}  # every attempt at one build shares its folder: one entry each, the newest
            for build in s.scalars(query).all():
                if build.folder not in latest and Path(build.folder).exists():
                    latest[build.folder] = build
            return list(latest.values())

    def builds(self, name: str | None = None) -> list[BuildRow]:
        with self._sessions() as s:
            query = select(BuildRow).order_by(BuildRow.id)
            if name is not None:
                query = query.where(BuildRow.name == name)
            return list(s.scalars(query).all())

    def abandon_builds(self, name: str) -> list[BuildRow]:
        """Mark every unfinished build of `name` as failed-and-removed; returns them."""
        with self.session() as s:
            rows = s.scalars(select(BuildRow).where(BuildRow.name == name, BuildRow.status.in_(UNFINISHED))).all()
            for b in rows:
                b.status, b.finished = "removed", utcnow()
            return list(rows)

    # ---- adapters --------------------------------------------------------------------------
    def register_adapter(self, name: str, kind: str, path: Path, model_name: str, model_fingerprint: str,
                         details: dict) -> AdapterRow:
        """Catalogue an adapter file; a later one of the same name replaces the entry."""
        with self.session() as s:
            row = s.scalars(select(AdapterRow).where(AdapterRow.name == name)).first()
            if row is None:
                row = AdapterRow(name=name)
                s.add(row)
            row.kind, row.path, row.model_name, row.model_fingerprint = kind, str(path), model_name, model_fingerprint
            row.details, row.created = details, utcnow()
        return self.adapter(name)

    def adapter(self, name: str) -> AdapterRow | None:
        with self._sessions() as s:
            return s.scalars(select(AdapterRow).where(AdapterRow.name == name)).first()

    def adapters(self, kind: str | None = None, model_fingerprint: str | None = None) -> list[AdapterRow]:
        query = select(AdapterRow).order_by(AdapterRow.name)
        if kind is not None:
            query = query.where(AdapterRow.kind == kind)
        if model_fingerprint is not None:
            query = query.where(AdapterRow.model_fingerprint == model_fingerprint)
        with self._sessions() as s:
            return list(s.scalars(query).all())

    # ---- evaluations -----------------------------------------------------------------------
    def record_evaluation(self, kind: str, model_name: str, datastore: str | None, parameters: dict,
                          results: dict) -> int:
        with self.session() as s:
            row = EvaluationRow(kind=kind, model_name=model_name, datastore=datastore, parameters=parameters,
                                results=results)
            s.add(row)
            s.flush()
            return row.id

    def remove_evaluation(self, evaluation_id: int) -> EvaluationRow | None:
        with self.session() as s:
            row = s.get(EvaluationRow, evaluation_id)
            if row is not None:
                s.delete(row)
            return row

    def evaluations(self, kind: str | None = None) -> list[EvaluationRow]:
        query = select(EvaluationRow).order_by(EvaluationRow.created.desc(), EvaluationRow.id.desc())
        if kind is not None:
            query = query.where(EvaluationRow.kind == kind)
        with self._sessions() as s:
            return list(s.scalars(query).all())

    # ---- fitted kNN-LM settings --------------------------------------------------------------
    def record_fit(self, datastore: str, **values) -> FittedSettingsRow:
        """Keep a fit of `datastore`'s λ and T (`FittedSettingsRow`'s columns as keywords)."""
        with self.session() as s:
            owner = s.scalars(select(DatastoreRow).where(DatastoreRow.name == datastore)).first()
            if owner is None:
                raise CatalogError(f"no datastore named '{datastore}' in the catalog {self.path}")
            row = FittedSettingsRow(datastore_id=owner.id, datastore=datastore, **values)
            s.add(row)
        return row

    def fitted(self, datastore: str) -> FittedSettingsRow | None:
        """`datastore`'s latest fit, or None (none yet; or an older catalog opened read-only, which
        has no table for them)."""
        fits = self.fits(datastore, limit=1)
        return fits[0] if fits else None

    def fits(self, datastore: str, limit: int | None = None) -> list[FittedSettingsRow]:
        """`datastore`'s fits, newest first."""
        if self.read_only and not inspect(self.engine).has_table(FittedSettingsRow.__tablename__):
            return []
        query = (select(FittedSettingsRow).join(DatastoreRow, FittedSettingsRow.datastore_id == DatastoreRow.id)
                 .where(DatastoreRow.name == datastore)
                 .order_by(FittedSettingsRow.created.desc(), FittedSettingsRow.id.desc()).limit(limit))
        with self._sessions() as s:
            return list(s.scalars(query).all())

    # ---- models ----------------------------------------------------------------------------
    def remember_model(self, spec: str, name: str, fingerprint: str) -> None:
        with self.session() as s:
            row = s.scalars(select(ModelRow).where(ModelRow.spec == spec)).first()
            if row is None:
                s.add(ModelRow(spec=spec, name=name, fingerprint=fingerprint))
            else:
                row.name, row.fingerprint, row.last_used = name, fingerprint, utcnow()

    def recent_models(self, limit: int = 10) -> list[ModelRow]:
        with self._sessions() as s:
            return list(s.scalars(select(ModelRow).order_by(ModelRow.last_used.desc()).limit(limit)).all())


def _writable(path: Path) -> bool:
    """Whether the catalog can be written: its file if it exists, else the folder it would go in."""
    if path.exists():  # SQLite also writes its -wal and -shm files beside it
        return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
    return os.access(next((p for p in path.parents if p.exists()), path.parent), os.W_OK)


def _add_new_columns(engine) -> None:
    """Columns added after a catalog was first created (create_all makes only missing tables)."""
    for table in Base.metadata.sorted_tables:
        present = {c["name"] for c in inspect(engine).get_columns(table.name)}
        for column in table.columns:
            if column.name not in present and column.nullable:
                with engine.begin() as connection:
                    connection.execute(text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" '
                                            f"{column.type.compile(engine.dialect)}"))


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
