"""The copy store: every generated text with its provenance, looked up by request key.

A request key is the sha256 of the task, the product ids, the canonical parameters, the
model and the prompt templates' version, and the variant number: asking the same thing of
the same model with the same prompts again returns the stored text without a model call.
A text a person rejected is not served again from the store; one refused by the checks
(copy_on_fail=refuse) is, since the same request would be refused again.

A person's edit is checked like the model's text, and its outcome replaces the row's
`checks` / `failed_checks` / `passed` (the model's own outcome moves to
meta["generated_checks"]): every reader (list filters, export, the request-key cache that
batch jobs reuse) sees the verdict of the text it serves, never a stale one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, String, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from service.copy.tables import CopyRow
from service.copy.tasks import CheckOutcome, CopyResult
from service.db import get_engine, session_scope

STATUSES = ("draft", "approved", "rejected")
# Checks whose failure means the text carries something planted in the product data: such a
# text is left out of exports unless asked for (include_unsafe).
SECURITY_CHECKS = ("injection",)
# INSERT … ON CONFLICT DO NOTHING, per dialect (the unique index ux_copies_job_item).
_UPSERT = {"postgresql": pg_insert, "sqlite": sqlite_insert}


@dataclass(frozen=True)
class CopyFilter:
    """Which stored texts to read: a field left None matches any text."""

    status: str | None = None
    task: str | None = None
    product_id: str | None = None  # also matches a headline that lists it in product_ids
    language: str | None = None
    job_id: int | None = None
    passed: bool | None = None


class CopyCheckFailed(ValueError):
    """A person's text that fails the checks, refused for approval (nothing is stored)."""

    def __init__(self, failed: dict[str, dict[str, Any]]) -> None:
        self.failed = failed
        named = "; ".join(f"{n} ({c.get('detail') or 'failed'})" for n, c in failed.items())
        super().__init__(f"the edited text fails checks: {named}")


def is_unsafe(row: CopyRow) -> bool:
    """The text failed a security check (an instruction from the data repeated)."""
    return any(c in SECURITY_CHECKS for c in (row.failed_checks or []))


def check_columns(checks: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """The columns every reader looks at, for a checked text ({name: {ok, detail, found}});
    an edit nobody checked (None) is not passed."""
    if checks is None:
        checks = {"unchecked": {"ok": False, "detail": "the edit was not checked", "found": []}}
    failed = [name for name, c in checks.items() if not c.get("ok")]
    return {"checks": dict(checks), "failed_checks": failed, "passed": not failed}


class CopyNotFound(KeyError):
    """An id that is not in the copy store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 kept: one spelling per value (hash input)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def request_key(
    task: str,
    product_ids: Sequence[str],
    params: dict[str, Any],
    model_id: str,
    template_version: str,
    variant: int,
) -> str:
    payload = {
        "task": task,
        "products": list(product_ids),
        "params": params,
        "model": model_id,
        "template_version": template_version,
        "variant": variant,
    }
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def to_result(row: CopyRow, cached: bool = False) -> CopyResult:
    refused = bool((row.meta or {}).get("refused"))
    shown = row.edited_text if row.edited_text is not None else (None if refused else row.text)
    return CopyResult(
        id=row.id,
        request_key=row.request_key,
        task=row.task,  # type: ignore[arg-type]
        product_id=row.product_id,
        product_ids=list(row.product_ids or []),
        language=row.language,
        variant=row.variant,
        text=shown,
        generated_text=row.text,
        edited_text=row.edited_text,
        status=row.status,  # type: ignore[arg-type]
        passed=row.passed,
        refused=refused,
        failed_checks=list(row.failed_checks or []),
        checks={k: CheckOutcome(**v) for k, v in (row.checks or {}).items()},
        attempts=row.attempts,
        cached=cached,
        model_id=row.model_id,
        backend=row.backend,
        template=row.template,
        template_version=row.template_version,
        params=dict(row.params or {}),
        note=row.note or "",
        meta=dict(row.meta or {}),
        job_id=row.job_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class CopyStore:
    def __init__(self, url_or_engine: str | Engine) -> None:
        self.engine = get_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine

    # -- cache ------------------------------------------------------------------------
    def find_many(self, keys: Sequence[str]) -> dict[str, CopyRow]:
        """The newest servable row for each key that has one (see module doc)."""
        out: dict[str, CopyRow] = {}
        keys = list(dict.fromkeys(keys))
        with session_scope(self.engine) as s:
            for i in range(0, len(keys), 500):
                stmt = (
                    select(CopyRow)
                    .where(CopyRow.request_key.in_(keys[i : i + 500]))
                    .order_by(CopyRow.id.desc())
                )
                for row in s.scalars(stmt):
                    servable = row.status != "rejected" or (row.meta or {}).get("refused")
                    if servable and row.request_key not in out:
                        out[row.request_key] = row
        return out

    def add(self, rows: Sequence[CopyRow], session: Session | None = None) -> list[CopyRow]:
        """Insert rows (in the caller's transaction when a session is given). A batch job's
        text is written once per (job, task, product, variant): where one is stored already
        (a worker retried an item another one wrote), that row is returned instead."""
        if session is not None:
            return [self._add_one(session, r) for r in rows]
        with session_scope(self.engine) as s:
            return [self._add_one(s, r) for r in rows]

    @staticmethod
    def _add_one(s: Session, row: CopyRow) -> CopyRow:
        dialect = s.get_bind().dialect.name
        if row.job_id is None or row.product_id is None or dialect not in _UPSERT:
            s.add(row)
            s.flush()
            return row
        if row.variant is None:  # the column default, needed by the look-up below
            row.variant = 0
        values = {c.key: getattr(row, c.key) for c in CopyRow.__table__.columns}
        values = {k: v for k, v in values.items() if v is not None and k != "id"}
        s.execute(_UPSERT[dialect](CopyRow).values(**values).on_conflict_do_nothing())
        stored = s.scalars(
            select(CopyRow).where(
                CopyRow.job_id == row.job_id,
                CopyRow.task == row.task,
                CopyRow.product_id == row.product_id,
                CopyRow.variant == row.variant,
            )
        ).one()
        return stored

    # -- reading ----------------------------------------------------------------------
    def get(self, copy_id: int) -> CopyRow:
        with session_scope(self.engine) as s:
            row = s.get(CopyRow, copy_id)
            if row is None:
                raise CopyNotFound(f"unknown copy id {copy_id}")
            return row

    @staticmethod
    def _filtered(f: CopyFilter | None):  # noqa: ANN205 - a Select
        stmt = select(CopyRow)
        f = f or CopyFilter()
        if f.status:
            if f.status not in STATUSES:
                raise ValueError(f"unknown status {f.status!r}: use one of {', '.join(STATUSES)}")
            stmt = stmt.where(CopyRow.status == f.status)
        if f.task:
            stmt = stmt.where(CopyRow.task == f.task)
        if f.product_id:
            # A headline lists its products in product_ids (JSON); match the quoted id.
            stmt = stmt.where(
                or_(
                    CopyRow.product_id == f.product_id,
                    CopyRow.product_ids.cast(_text_type()).like(f'%"{f.product_id}"%'),
                )
            )
        if f.language:
            stmt = stmt.where(CopyRow.language == f.language)
        if f.job_id is not None:
            stmt = stmt.where(CopyRow.job_id == f.job_id)
        if f.passed is not None:
            stmt = stmt.where(CopyRow.passed == f.passed)
        return stmt

    def list(
        self, where: CopyFilter | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[CopyResult]:
        """Newest first."""
        stmt = self._filtered(where).order_by(CopyRow.id.desc()).offset(offset).limit(limit)
        with session_scope(self.engine) as s:
            return [to_result(r) for r in s.scalars(stmt)]

    def iter_all(self, where: CopyFilter | None = None) -> Iterator[CopyRow]:
        """Every matching row, oldest first, in pages (for export)."""
        last = 0
        while True:
            stmt = self._filtered(where).where(CopyRow.id > last).order_by(CopyRow.id).limit(500)
            with session_scope(self.engine) as s:
                rows = list(s.scalars(stmt))
            if not rows:
                return
            yield from rows
            last = rows[-1].id

    # -- review -----------------------------------------------------------------------
    def _update(self, copy_id: int, **values: Any) -> CopyResult:
        with session_scope(self.engine) as s:
            row = s.get(CopyRow, copy_id)
            if row is None:
                raise CopyNotFound(f"unknown copy id {copy_id}")
            for k, v in values.items():
                setattr(row, k, v)
            row.updated_at = datetime.utcnow()
            s.flush()
            return to_result(row)

    def approve(
        self,
        copy_id: int,
        edited_text: str | None = None,
        checks: dict[str, dict[str, Any]] | None = None,
    ) -> CopyResult:
        """Approve the shown text, or an edit of it. An edit must come with its checks
        (CopyWriter.approve runs them) and pass them: an approved edit is never unchecked."""
        values: dict[str, Any] = {"status": "approved"}
        if edited_text is not None:
            cols = check_columns(checks)
            if not cols["passed"]:
                raise CopyCheckFailed({n: cols["checks"][n] for n in cols["failed_checks"]})
            values |= self._edit_values(copy_id, edited_text, cols)
        return self._update(copy_id, **values)

    def reject(self, copy_id: int, reason: str = "") -> CopyResult:
        return self._update(copy_id, status="rejected", note=reason)

    def edit(
        self, copy_id: int, text: str, checks: dict[str, dict[str, Any]] | None = None
    ) -> CopyResult:
        """A person's edit: stored beside the generated text; back to draft for review.
        `checks` (the checks re-run on the edit) become the row's verdict."""
        return self._update(
            copy_id, status="draft", **self._edit_values(copy_id, text, check_columns(checks))
        )

    def _edit_values(self, copy_id: int, text: str, cols: dict[str, Any]) -> dict[str, Any]:
        text = text.strip()
        if not text:
            raise ValueError("an edited text cannot be empty")
        row = self.get(copy_id)
        meta = dict(row.meta or {})
        meta.pop("edited_checks", None)  # the verdict lives in the columns now
        if row.edited_text is None:  # keep the model's own outcome once, for the audit
            meta["generated_checks"] = {
                "checks": row.checks,
                "failed_checks": row.failed_checks,
                "passed": row.passed,
            }
        failed = [cols["checks"][n].get("detail") or n for n in cols["failed_checks"]]
        note = "flagged: " + "; ".join(failed) if failed else ""
        return {"edited_text": text, "meta": meta, "note": note, **cols}


def _text_type():  # noqa: ANN202
    return String()
