"""/v1/interactions: append events to the interaction log."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import V1, App
from service.api.errors import error_responses
from service.api.protocol import AppendResult, InteractionsAppend

router = APIRouter(prefix=f"{V1}/interactions", tags=["interactions"])


@router.post(
    "",
    summary="Append interaction events",
    description="Events for products the catalogue does not hold are reported in `errors` and "
    "skipped; the rest are appended (an exact duplicate — same user, product, event and "
    "time — is skipped silently). When no event is for a known product the answer is 422.",
    responses=error_responses(400),
)
def append_interactions(body: InteractionsAppend, app: App) -> AppendResult:
    return AppendResult.from_domain(app.add_interactions(body.interactions), body.interactions)
