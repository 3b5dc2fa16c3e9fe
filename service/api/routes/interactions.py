"""/v1/interactions: append events to the interaction log."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import V1, Index
from service.api.errors import ApiError, error_responses
from service.api.protocol import AppendResult, FieldError, InteractionsAppend, ItemError

router = APIRouter(prefix=f"{V1}/interactions", tags=["interactions"])


@router.post(
    "",
    response_model=AppendResult,
    summary="Append interaction events",
    description="Events for products the catalogue does not hold are reported in `errors` and "
    "skipped; the rest are appended (an exact duplicate — same user, product, event and "
    "time — is skipped silently). When no event is for a known product the answer is 422.",
    responses=error_responses(400, 401, 413, 422),
)
def append_interactions(body: InteractionsAppend, index: Index) -> AppendResult:
    store = index.rs.store
    known = set(store.get_products({i.product_id for i in body.interactions}))
    good, errors = [], []
    for n, ev in enumerate(body.interactions):
        if ev.product_id in known:
            good.append(ev)
        else:
            errors.append(
                ItemError(
                    index=n,
                    id=ev.product_id,
                    fields=[FieldError(field="product_id", problem="unknown product id")],
                )
            )
    if not good:
        fields = [(f"interactions[{e.index}].product_id", "unknown product id") for e in errors]
        raise ApiError(422, "no event is for a known product", fields=fields[:50])
    added = store.add_interactions(good)
    if added:
        index.mark_stale()  # co-interaction graph: rebuilt by the next read (throttled)
    return AppendResult(received=len(body.interactions), added=added, errors=errors)
