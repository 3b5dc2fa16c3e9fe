"""The eval's `recsmith pipeline` row is what /v1/recommendations serves: the fusion is
fitted on the validation target, saved in the data dir, loaded by the service, and the
API returns the very ranking the eval scored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from eval.ranking import PIPELINE, evaluate_recsmith
from service.api.app import create_app
from service.config import Settings
from service.offline.datasets import load_movielens_100k, slice_users
from service.offline.split import leave_last_two_out
from tests.eval.fakes import HashEncoder


@pytest.fixture(scope="module")
def small():  # noqa: ANN201
    return slice_users(load_movielens_100k(), 15, seed=3)


def test_pipeline_row_equals_the_api(small, tmp_path: Path) -> None:  # noqa: ANN001
    # One fake encoder for the eval and the app (the model is not under test here), given to
    # the app through its constructor seam.
    encoder = HashEncoder()
    split = leave_last_two_out(small, "item_id")
    rows = np.arange(len(split.users))
    data_dir = tmp_path / "data"
    rev = evaluate_recsmith(small, split, rows, encoder, set(), data_dir=data_dir, pipeline_k=20)

    # The fusion was fitted on the validation target and saved where the service looks.
    artefact = json.loads(Settings(data_dir=data_dir).fusion_file.read_text())
    assert artefact["info"]["fitted_on"].startswith("validation target")
    assert artefact["info"]["encoder_id"] == encoder.model_id
    assert artefact["info"]["data_version"].startswith("ml-100k:item_id:sha256:")
    assert set(artefact["info"]["validation"]) >= {"default_rrf", "fitted"}
    pipe = next(r for r in rev.results if r.name == PIPELINE)
    assert pipe.users == len(rows) and pipe.params["fusion_status"] == "fitted"
    fitted = next(r for r in rev.results if "fitted fusion" in r.name)
    assert pipe.test["ndcg@10"] == pytest.approx(fitted.test["ndcg@10"])  # no rerank

    settings = Settings(
        data_dir=data_dir,
        database_url="",
        llm_backend="openai",
        llm_base_url="http://127.0.0.1:9/v1",  # nothing listens: no model is loaded
        llm_max_retries=0,
    )
    with TestClient(create_app(settings, encoder=encoder)) as client:
        for user in split.users[:5]:
            resp = client.post("/v1/recommendations", json={"user_id": user, "k": 20})
            assert resp.status_code == 200, resp.text
            api = [i["product_id"] for i in resp.json()["items"]]
            assert api == rev.served[user]
            assert len(api) == 20
