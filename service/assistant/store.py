"""Conversations and messages over the shared database (SQLite by default)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field, field_serializer
from sqlalchemy import Engine, select

from service.assistant.tables import AssistantConversationRow, AssistantMessageRow
from service.catalog.store import NotFound
from service.db import get_engine, session_scope


class ConversationNotFound(NotFound):
    """A conversation_id that was never created here (the API answers 404)."""


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class StoredMessage(BaseModel):
    """One message of a conversation: what the store keeps and what the API returns."""

    id: int
    role: str
    content: str
    cited_ids: list[str] = Field(default_factory=list)
    product_ids: list[str] = Field(default_factory=list)
    model_id: str | None = None
    template: str | None = None
    template_version: str | None = None
    degraded: bool = False
    meta: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None

    @field_serializer("created_at")
    def _utc(self, v: datetime | None) -> str | None:
        # Stored as naive UTC; shown as RFC 3339 with a Z.
        if v is None:
            return None
        if v.tzinfo is not None:
            v = v.astimezone(UTC).replace(tzinfo=None)
        return v.isoformat() + "Z"

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump()


def _to_message(r: AssistantMessageRow) -> StoredMessage:
    return StoredMessage(
        id=r.id,
        role=r.role,
        content=r.content,
        cited_ids=list(r.cited_ids or []),
        product_ids=list(r.product_ids or []),
        model_id=r.model_id,
        template=r.template,
        template_version=r.template_version,
        degraded=bool(r.degraded),
        meta=dict(r.meta or {}),
        created_at=r.created_at,
    )


class ConversationStore:
    def __init__(self, url_or_engine: str | Engine) -> None:
        self.engine = get_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine

    def create(self, user_id: str | None = None, title: str = "") -> str:
        cid = uuid.uuid4().hex
        now = _now()
        with session_scope(self.engine) as s:
            s.add(
                AssistantConversationRow(
                    id=cid, user_id=user_id, title=title[:200], created_at=now, updated_at=now
                )
            )
        return cid

    def exists(self, conversation_id: str) -> bool:
        with session_scope(self.engine) as s:
            return s.get(AssistantConversationRow, conversation_id) is not None

    def require(self, conversation_id: str) -> None:
        if not self.exists(conversation_id):
            raise ConversationNotFound(f"unknown conversation id {conversation_id!r}")

    def messages(self, conversation_id: str, limit: int | None = None) -> list[StoredMessage]:
        """Oldest first; `limit` keeps the most recent ones."""
        self.require(conversation_id)
        stmt = (
            select(AssistantMessageRow)
            .where(AssistantMessageRow.conversation_id == conversation_id)
            .order_by(AssistantMessageRow.id.desc())
        )
        if limit is not None:
            stmt = stmt.limit(limit)
        with session_scope(self.engine) as s:
            rows = list(s.scalars(stmt))
        return [_to_message(r) for r in reversed(rows)]

    def add(self, conversation_id: str, role: str, content: str, **fields: Any) -> int:
        now = _now()
        with session_scope(self.engine) as s:
            conv = s.get(AssistantConversationRow, conversation_id)
            if conv is None:
                raise ConversationNotFound(f"unknown conversation id {conversation_id!r}")
            conv.updated_at = now
            row = AssistantMessageRow(
                conversation_id=conversation_id,
                role=role,
                content=content,
                cited_ids=list(fields.pop("cited_ids", []) or []),
                product_ids=list(fields.pop("product_ids", []) or []),
                meta=dict(fields.pop("meta", {}) or {}),
                created_at=now,
                **fields,
            )
            s.add(row)
            s.flush()
            return row.id

    def get(self, conversation_id: str) -> dict[str, Any]:
        """The conversation with its messages, for the API."""
        with session_scope(self.engine) as s:
            conv = s.get(AssistantConversationRow, conversation_id)
            if conv is None:
                raise ConversationNotFound(f"unknown conversation id {conversation_id!r}")
            head = {
                "id": conv.id,
                "user_id": conv.user_id,
                "title": conv.title,
                "created_at": conv.created_at.isoformat() + "Z",
                "updated_at": conv.updated_at.isoformat() + "Z",
            }
        head["messages"] = [m.as_dict() for m in self.messages(conversation_id)]
        return head
