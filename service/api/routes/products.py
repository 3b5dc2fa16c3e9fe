"""/v1/products: bulk upsert, get, list or search with paging, delete, similar items."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from pydantic import ValidationError

from service.api.deps import V1, App
from service.api.errors import ApiError, error_responses, validation_fields
from service.api.protocol import (
    MAX_K,
    MAX_PAGE,
    MAX_QUERY_CHARS,
    FieldError,
    ItemError,
    ProductPage,
    ProductsUpsert,
    SimilarResponse,
    UpsertResult,
)
from service.catalog.models import ID_PATTERN, Product

router = APIRouter(prefix=f"{V1}/products", tags=["products"])

PathId = Annotated[str, Path(pattern=ID_PATTERN, description="Product id")]
Category = Annotated[str | None, Query(max_length=128, description="Only this category")]


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
    summary="Insert or update products in bulk",
    description="Each item is validated on its own: good items are stored (and indexed), "
    "bad ones are listed in `errors` with the field and the problem. When no item is good "
    "the answer is 422.",
    responses=error_responses(400),
)
def upsert_products(body: ProductsUpsert, app: App) -> UpsertResult:
    # Each item is parsed on its own here (the protocol's job); the good ones are stored.
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
    return UpsertResult.from_domain(app.upsert_products(good), len(body.products), errors)


@router.get(
    "",
    summary="List products, or search them by text",
    description="Without `q`: the catalogue in id order, paged. With `q`: dense + BM25 "
    "search results in relevance order, paged (at most 500 deep).",
)
def list_products(
    app: App,
    q: Annotated[str | None, Query(max_length=MAX_QUERY_CHARS, description="Search text")] = None,
    category: Category = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> ProductPage:
    if q and q.strip():
        return ProductPage.from_domain(app.search_page(q, category, limit, offset))
    return ProductPage.from_domain(app.list_products(category, limit, offset))


@router.get("/{product_id}", summary="Get one product", responses=error_responses(404))
def get_product(product_id: PathId, app: App) -> Product:
    return app.get_product(product_id)


@router.delete(
    "/{product_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a product (and its interactions)",
    responses=error_responses(404),
)
def delete_product(product_id: PathId, app: App) -> Response:
    app.delete_product(product_id)
    return Response(status_code=204)


@router.get(
    "/{product_id}/similar",
    summary="Products similar to this one",
    description="Content similarity (dense) fused with co-interaction (bought/viewed together).",
    responses=error_responses(404),
)
def similar_products(
    product_id: PathId,
    app: App,
    k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
    category: Category = None,
    in_stock_only: bool = False,
) -> SimilarResponse:
    categories = [category] if category else None  # the API filters on one category
    similar = app.similar(product_id, k, categories=categories, in_stock_only=in_stock_only)
    return SimilarResponse.from_domain(similar)
