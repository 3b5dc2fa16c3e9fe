"""ORM tables of the LLM layer: one row per prompt the model saw (like simonw/llm's log)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from service.orm import Base, IntegerId


class LLMCallRow(IntegerId, Base):
    __tablename__ = "llm_calls"
    __table_args__ = (Index("ix_llm_calls_ts", "ts"),)

    ts: Mapped[datetime] = mapped_column(DateTime)  # UTC, when the call started
    backend: Mapped[str] = mapped_column(String(32))
    model_id: Mapped[str] = mapped_column(String(512))
    kind: Mapped[str] = mapped_column(String(32))  # generate | stream | choice_logprobs
    # A plain string prompt as is; a chat message list as JSON.
    prompt: Mapped[str] = mapped_column(Text)
    # Generated text, or JSON of {choice: logprob} for choice_logprobs.
    response: Mapped[str | None] = mapped_column(Text, nullable=True)
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    latency_ms: Mapped[float] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
