"""/v1/copy: product copy (filled in when the copy stage lands)."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import V1

router = APIRouter(prefix=f"{V1}/copy", tags=["copy"])
