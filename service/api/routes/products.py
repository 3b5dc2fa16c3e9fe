"""/v1/products: bulk upsert, get, list or search with paging, delete, similar items."""

from __future__ import annotations

import math
import time
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from pydantic import ValidationError

from service.api.deps import V1, Index
from service.api.errors import ApiError, error_responses, validation_fields
from service.api.protocol import (
    MAX_K,
    MAX_PAGE,
    MAX_QUERY_CHARS,
    FieldError,
    IndexReportOut,
    ItemError,
    ProductPage,
    ProductsUpsert,
    ScoredProduct,
    SimilarResponse,
    UpsertResult,
)
from service.catalog.models import ID_PATTERN, Product
from service.catalog.store import NotFound
from service.recsmith import Recsmith
from service.retrieval.filters import Filters
from service.retrieval.retriever import Candidate, RetrievalRequest

router = APIRouter(prefix=f"{V1}/products", tags=["products"])

PathId = Annotated[str, Path(pattern=ID_PATTERN, description="Product id")]
Category = Annotated[str | None, Query(max_length=128, description="Only this category")]
# Search pages come from one ranked shortlist; the retriever returns at most this many.
MAX_SEARCH_DEPTH = 500


def scored(rs: Recsmith, cands: list[Candidate]) -> list[ScoredProduct]:
    products = rs.store.get_products([c.product_id for c in cands])
    out = []
    for c in cands:
        p = products.get(c.product_id)
        if p is None:  # deleted since it was indexed
            continue
        out.append(
            ScoredProduct(
                product_id=p.id,
                title=p.title,
                category=p.category,
                brand=p.brand,
                price=p.price,
                currency=p.currency,
                in_stock=p.in_stock,
                score=round(float(c.score), 6),
                sources=c.sources,
            )
        )
    return out


def _validate_item(i: int, item: Any) -> tuple[Product | None, ItemError | None]:
    pid = item.get("id") if isinstance(item, dict) and isinstance(item.get("id"), str) else None
    try:
        p = Product.model_validate(item)
    except ValidationError as e:
        fields = validation_fields(e.errors())
        for f in fields:  # an error about the item as a whole (not an object, …)
            if f.field == "body":
                f.field = "item"
        return None, ItemError(index=i, id=pid, fields=fields)
    except (ValueError, TypeError) as e:  # a validator that raised outside pydantic's wrapping
        return None, ItemError(index=i, id=pid, fields=[_fe("item", str(e))])
    if p.price is not None and not math.isfinite(p.price):
        return None, ItemError(index=i, id=pid, fields=[_fe("price", "must be a finite number")])
    return p, None


def _fe(field: str, problem: str) -> FieldError:
    return FieldError(field=field, problem=problem)


@router.post(
    "",
    response_model=UpsertResult,
    summary="Insert or update products in bulk",
    description="Each item is validated on its own: good items are stored (and indexed), "
    "bad ones are listed in `errors` with the field and the problem. When no item is good "
    "the answer is 422.",
    responses=error_responses(400, 401, 413, 422),
)
def upsert_products(body: ProductsUpsert, index: Index) -> UpsertResult:
    good: list[Product] = []
    errors: list[ItemError] = []
    for i, item in enumerate(body.products):
        p, err = _validate_item(i, item)
        if err:
            errors.append(err)
        elif p is not None:
            good.append(p)
    if not good:
        fields = [(f"products[{e.index}].{f.field}", f.problem) for e in errors for f in e.fields]
        raise ApiError(422, "no product in the request is valid", fields=fields[:50])
    inserted, updated, changed = index.rs.store.upsert_products(good)
    report = index.sync() if changed else None
    unique = len({p.id for p in good})
    return UpsertResult(
        received=len(body.products),
        inserted=inserted,
        updated=updated,
        unchanged=unique - inserted - updated,
        errors=errors,
        index=IndexReportOut(**report.as_dict()) if report else None,
    )


@router.get(
    "",
    response_model=ProductPage,
    summary="List products, or search them by text",
    description="Without `q`: the catalogue in id order, paged. With `q`: dense + BM25 "
    "search results in relevance order, paged (at most 500 deep).",
    responses=error_responses(401, 422),
)
def list_products(
    index: Index,
    q: Annotated[str | None, Query(max_length=MAX_QUERY_CHARS, description="Search text")] = None,
    category: Category = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> ProductPage:
    if q and q.strip():
        if offset >= MAX_SEARCH_DEPTH:
            return ProductPage(items=[], total=None, limit=limit, offset=offset)
        depth = min(offset + limit, MAX_SEARCH_DEPTH)
        filters = Filters(categories=[category] if category else [], exclude_purchased=False)
        with index.reading() as rs:
            cands = rs.candidates(RetrievalRequest(query=q, k=depth, filters=filters))
            page_ids = [c.product_id for c in cands[offset : offset + limit]]
            found = rs.store.get_products(page_ids)
        items = [found[i] for i in page_ids if i in found]
        more = len(cands) == depth and depth < MAX_SEARCH_DEPTH
        return ProductPage(
            items=items,
            total=None,
            limit=limit,
            offset=offset,
            next_offset=offset + limit if more else None,
        )
    store = index.rs.store
    total = store.count_products() if not category else None
    items = list(store.iter_products(category=category, limit=limit + 1, offset=offset))
    more = len(items) > limit
    return ProductPage(
        items=items[:limit],
        total=total,
        limit=limit,
        offset=offset,
        next_offset=offset + limit if more else None,
    )


@router.get(
    "/{product_id}",
    response_model=Product,
    summary="Get one product",
    responses=error_responses(401, 404, 422),
)
def get_product(product_id: PathId, index: Index) -> Product:
    return index.rs.store.get_product(product_id)


@router.delete(
    "/{product_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a product (and its interactions)",
    responses=error_responses(401, 404, 422),
)
def delete_product(product_id: PathId, index: Index) -> Response:
    index.rs.store.delete_product(product_id)
    index.sync()
    return Response(status_code=204)


@router.get(
    "/{product_id}/similar",
    response_model=SimilarResponse,
    summary="Products similar to this one",
    description="Content similarity (dense) fused with co-interaction (bought/viewed together).",
    responses=error_responses(401, 404, 422),
)
def similar_products(
    product_id: PathId,
    index: Index,
    k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
    category: Category = None,
    in_stock_only: bool = False,
) -> SimilarResponse:
    t0 = time.perf_counter()
    filters = Filters(
        categories=[category] if category else [],
        in_stock_only=in_stock_only,
        exclude_purchased=False,
    )
    with index.reading() as rs:
        if not rs.store.has_product(product_id):
            raise NotFound(f"unknown product id {product_id!r}")
        req = RetrievalRequest(seed_product_id=product_id, k=k, filters=filters)
        items = scored(rs, rs.candidates(req))
    ms = round((time.perf_counter() - t0) * 1000, 2)
    return SimilarResponse(product_id=product_id, items=items, timings_ms={"retrieve": ms})
