"""The feedback store: flagged images and what people said about them, through SQLAlchemy.

Embedded SQLite by default (one file, WAL mode, a busy timeout so that the service's threads queue
for the write lock instead of failing), PostgreSQL for several replicas. The schema is Alembic's
(``service/feedback/migrations``), upgraded to the newest revision when the store opens. Image bytes
are kept once per sha256 with how often they were flagged; each record keeps its model, version,
labels, scores, note, request id and time. Blocking calls: the routes run them on a thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from imgcls.errors import ImgclsError

__all__ = [
    "FeedbackImage",
    "FeedbackRecord",
    "FeedbackStore",
    "NewFeedback",
    "StoreFullError",
    "StoreUnavailableError",
    "default_url",
    "open_store",
]

log = logging.getLogger("imgcls.feedback")


class StoreUnavailableError(ImgclsError):
    """The store cannot be reached or written (down, misconfigured, disk full)."""

    exit_code = 2


class StoreFullError(ImgclsError):
    """The model's share of the store is at its cap (``feedback_max_bytes_per_model``)."""


class Base(DeclarativeBase):
    pass


class FeedbackImage(Base):
    __tablename__ = "feedback_images"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    image_format: Mapped[str] = mapped_column(String(16))  # PNG, JPEG, ...: the file suffix on export
    flag_count: Mapped[int] = mapped_column(Integer, default=0)
    first_flagged_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class FeedbackRecord(Base):
    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(255), index=True)
    version: Mapped[int] = mapped_column(Integer)
    image_sha256: Mapped[str] = mapped_column(String(64), ForeignKey("feedback_images.sha256"), index=True)
    predicted_label: Mapped[str | None] = mapped_column(Text, nullable=True)
    correct_label: Mapped[str | None] = mapped_column(Text, nullable=True)  # None: "none of these"
    scores: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON object, label -> score
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


@dataclass(frozen=True)
class NewFeedback:
    """One flag, as the route has checked it."""

    model: str
    version: int
    image: bytes
    image_format: str
    correct_label: str | None
    predicted_label: str | None = None
    scores: dict[str, float] | None = None
    note: str | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class Stored:
    id: int
    image_sha256: str
    flag_count: int  # how often this image has been flagged, this flag included


def default_url(folder: Path) -> str:
    """The embedded SQLite file under ``folder``."""
    return f"sqlite:///{Path(folder).resolve() / 'feedback.db'}"


def _describe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(an unparsable URL)"


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    # WAL: readers never block the writer; busy_timeout: writers wait their turn for up to 30 s
    # instead of failing with "database is locked"
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreUnavailableError(
            f"feedback database URL {url!r} is not a URL; use sqlite:////path/feedback.db or "
            "postgresql+psycopg://user:password@host:5432/db"
        ) from None
    try:
        if parsed.get_backend_name() == "sqlite":
            if parsed.database:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"timeout": 30})
            event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3, which imgcls installs
        connect_args = {"connect_timeout": 5} if parsed.get_backend_name() == "postgresql" else {}
        return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    except (NoSuchModuleError, ImportError, OSError) as exc:
        raise StoreUnavailableError(f"feedback database {_describe_url(url)}: {exc}") from None


def upgrade_schema(engine: Engine) -> None:
    """Alembic's ``upgrade head`` on ``engine``: the tables as the newest migration describes them."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "service.feedback:migrations")
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class FeedbackStore:
    """Add and read flags. Thread-safe: each call has its own session."""

    def __init__(self, engine: Engine, *, max_bytes_per_model: int | None = None) -> None:
        self.engine = engine
        self.max_bytes_per_model = max_bytes_per_model
        self.url = _describe_url(engine.url.render_as_string(hide_password=False))

    def stored_bytes(self, session: Session, model: str) -> int:
        """Bytes of the distinct images this model's flags refer to."""
        images = select(FeedbackRecord.image_sha256).where(FeedbackRecord.model == model).distinct()
        total = session.scalar(
            select(func.coalesce(func.sum(FeedbackImage.size_bytes), 0)).where(
                FeedbackImage.sha256.in_(images)
            )
        )
        return int(total or 0)

    def add(self, flag: NewFeedback) -> Stored:
        """Store one flag (its image once per sha256); :class:`StoreFullError` at the model's cap."""
        digest = hashlib.sha256(flag.image).hexdigest()
        now = datetime.now(UTC)
        try:
            with Session(self.engine) as session, session.begin():
                known = session.get(FeedbackImage, digest)
                if known is None and self.max_bytes_per_model is not None:
                    used = self.stored_bytes(session, flag.model)
                    if used + len(flag.image) > self.max_bytes_per_model:
                        raise StoreFullError(
                            f"model {flag.model} has {used:,} bytes of flagged images stored; this image "
                            f"({len(flag.image):,} bytes) would pass the cap of {self.max_bytes_per_model:,} "
                            "(IMGCLS_FEEDBACK_MAX_BYTES_PER_MODEL); export and clear the store, or raise the cap"
                        )
                if known is None:
                    self._insert_image(session, digest, flag, now)
                session.execute(
                    update(FeedbackImage)
                    .where(FeedbackImage.sha256 == digest)
                    .values(flag_count=FeedbackImage.flag_count + 1)
                )
                record = FeedbackRecord(
                    model=flag.model,
                    version=flag.version,
                    image_sha256=digest,
                    predicted_label=flag.predicted_label,
                    correct_label=flag.correct_label,
                    scores=json.dumps(flag.scores) if flag.scores is not None else None,
                    note=flag.note,
                    request_id=flag.request_id,
                    created_at=now,
                )
                session.add(record)
                session.flush()
                count = session.scalar(select(FeedbackImage.flag_count).where(FeedbackImage.sha256 == digest))
                return Stored(record.id, digest, int(count or 0))
        except StoreFullError:
            raise
        except SQLAlchemyError as exc:
            raise StoreUnavailableError(
                f"the feedback store ({self.url}) failed: {_first_line(exc)}"
            ) from None

    def _insert_image(self, session: Session, digest: str, flag: NewFeedback, now: datetime) -> None:
        # Two replicas (or threads) may flag the same new image at once: the second insert does nothing.
        values = {
            "sha256": digest,
            "content": flag.image,
            "size_bytes": len(flag.image),
            "image_format": flag.image_format,
            "flag_count": 0,
            "first_flagged_at": now,
        }
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        session.execute(
            insert(FeedbackImage).values(**values).on_conflict_do_nothing(index_elements=["sha256"])
        )

    def records(self, model: str | None = None) -> list[tuple[FeedbackRecord, FeedbackImage]]:
        """Every flag (of ``model``), oldest first, each with its image row (content not loaded)."""
        from sqlalchemy.orm import defer

        query = (
            select(FeedbackRecord, FeedbackImage)
            .join(FeedbackImage, FeedbackImage.sha256 == FeedbackRecord.image_sha256)
            .options(defer(FeedbackImage.content))
            .order_by(FeedbackRecord.id)
        )
        if model is not None:
            query = query.where(FeedbackRecord.model == model)
        try:
            with Session(self.engine, expire_on_commit=False) as session:
                rows = [(record, image) for record, image in session.execute(query)]
        except SQLAlchemyError as exc:
            raise StoreUnavailableError(
                f"the feedback store ({self.url}) failed: {_first_line(exc)}"
            ) from None
        for record, _ in rows:
            if record.created_at.tzinfo is None:  # SQLite keeps no zone; every time is written in UTC
                record.created_at = record.created_at.replace(tzinfo=UTC)
        return rows

    def image_bytes(self, digests: Sequence[str]) -> Iterator[tuple[str, bytes]]:
        """``(sha256, bytes)`` for each digest, one at a time (images can be large)."""
        try:
            with Session(self.engine) as session:
                for digest in digests:
                    content = session.scalar(
                        select(FeedbackImage.content).where(FeedbackImage.sha256 == digest)
                    )
                    if content is not None:
                        yield digest, content
        except SQLAlchemyError as exc:
            raise StoreUnavailableError(
                f"the feedback store ({self.url}) failed: {_first_line(exc)}"
            ) from None

    def close(self) -> None:
        self.engine.dispose()


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def open_store(url: str, *, max_bytes_per_model: int | None = None) -> FeedbackStore:
    """Connect, bring the schema to the newest migration, and return the store; raises
    :class:`StoreUnavailableError` with the reason when the database cannot be used."""
    engine = _engine(url)
    try:
        upgrade_schema(engine)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise StoreUnavailableError(f"feedback database {_describe_url(url)}: {_first_line(exc)}") from None
    except OSError as exc:
        engine.dispose()
        raise StoreUnavailableError(f"feedback database {_describe_url(url)}: {exc}") from None
    return FeedbackStore(engine, max_bytes_per_model=max_bytes_per_model)
