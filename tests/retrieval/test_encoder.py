"""The encoder agrees with sentence-transformers on the same model, and caches by text."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from service.config import Settings
from service.retrieval import encoder_onnx
from service.retrieval.encoder import Encoder, default_encoder_path, encoder_for
from service.retrieval.encoder_onnx import onnx_available

TEXTS = [
    "Glass French press, 1 litre, borosilicate",
    "Waterproof 3-layer hiking jacket for men",
    "Orthopaedic memory foam dog bed, large",
    "a",
    "Wireless noise-cancelling headphones with 30 hours of battery life " * 8,
]


def test_matches_sentence_transformers() -> None:
    # lazy: optional reference library, only for this comparison
    from sentence_transformers import SentenceTransformer

    ours = Encoder("default").encode(TEXTS)
    st = SentenceTransformer(default_encoder_path(), device="cpu")
    st.max_seq_length = 256
    theirs = st.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    cos = (ours * theirs).sum(1)
    assert ours.shape == (len(TEXTS), 384) and ours.dtype == np.float32
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert cos.min() > 0.999, cos


def test_batching_and_order_do_not_change_vectors() -> None:
    enc = Encoder("default", batch_size=2)
    one_by_one = np.stack([enc.encode([t])[0] for t in TEXTS])
    batched = enc.encode(TEXTS)
    assert np.allclose(one_by_one, batched, atol=1e-5)


def test_cache_means_no_model_call_for_seen_text(tmp_path: Path) -> None:
    enc = Encoder("default", cache_path=tmp_path / "emb.sqlite")
    first = enc.encode(TEXTS)
    calls = enc.model_calls
    assert calls == len(TEXTS)
    again = enc.encode(list(reversed(TEXTS)))
    assert enc.model_calls == calls
    assert np.allclose(again[::-1], first)
    # A new process (new Encoder) reads the same cache file.
    enc2 = Encoder("default", cache_path=tmp_path / "emb.sqlite")
    enc2.encode(TEXTS[:2] + ["a brand new text"])
    assert enc2.model_calls == 1


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_int8_encoder_is_another_model_close_to_the_float_one(runtime: str, tmp_path: Path) -> None:
    """ "<name>+int8" quantises the Linear layers (torch's per-tensor int8, or ONNX Runtime's
    per-channel one): another model id each (an index encoded by one is never mixed with
    another's), vectors close to the float ones, the same nearest text."""
    if runtime == "onnx" and onnx_available() is not None:
        pytest.skip(f"ONNX runtime: {onnx_available()}")
    fp = Encoder("default")
    q8 = Encoder("default+int8", runtime=runtime, onnx_dir=tmp_path / "onnx")
    suffix = "+int8" if runtime == "torch" else f"+{encoder_onnx.INT8_RECIPE}"
    assert q8.model_id == fp.model_id + suffix and q8.dim == fp.dim
    a, b = fp.encode(TEXTS), q8.encode(TEXTS)
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    # MiniLM: torch's 0.89-0.97 here, ORT's per-channel 0.98-0.99; e5-small: ~0.98 / ~0.997
    assert (a * b).sum(1).min() > (0.85 if runtime == "torch" else 0.97)
    queries = ["french press coffee", "rain jacket for hiking", "bed for a big dog"]
    for enc, vecs in ((fp, a), (q8, b)):
        top = (enc.encode_queries(queries) @ vecs.T).argmax(1)
        assert top.tolist() == [0, 1, 2]


@pytest.mark.skipif(onnx_available() is not None, reason=f"ONNX runtime: {onnx_available()}")
def test_onnx_int8_vectors_depend_on_the_text_alone(tmp_path: Path) -> None:
    """ORT's int8 quantises activations with one scale per call, so each text is encoded
    alone: the same vector in a batch of any size as on its own; every batch runs on ORT (no
    torch model is loaded); a second encoder reuses the quantised export."""
    enc = Encoder("default+int8", runtime="onnx", onnx_dir=tmp_path / "onnx", batch_size=4)
    assert enc.model is None and enc.runtime == "onnx"
    alone = np.stack([enc.encode([t])[0] for t in TEXTS])
    batched = enc.encode(TEXTS)  # more than small_batch: the caller's thread
    assert np.array_equal(alone, batched)
    assert enc.onnx_calls == enc.model_calls == 2 * len(TEXTS)
    made = tmp_path / "onnx" / "model-int8.onnx"
    assert made.is_file() and (tmp_path / "onnx" / "stamp-int8.json").is_file()
    mtime = made.stat().st_mtime_ns
    again = Encoder("default+int8", runtime="auto", onnx_dir=tmp_path / "onnx", small_batch=0)
    assert made.stat().st_mtime_ns == mtime and again.model_id == enc.model_id
    assert np.array_equal(again.encode(TEXTS), batched)


def test_small_batches_run_on_one_thread_and_leave_the_process_count() -> None:
    """A query or one product's write is encoded on the encoder's own thread with one torch
    thread (two spinning threads slow a single upsert on 2 cores); the caller's thread count
    and the vectors are unchanged, and batches keep the process's count."""
    # lazy: torch takes seconds to import; the encoder module imports it the same way
    import torch

    torch.set_num_threads(2)
    enc = Encoder("default", small_batch=2)
    assert enc.small_batch_threads() == 1
    assert torch.get_num_threads() == 2
    # A thread that starts after the encoder still gets the process's count.
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert seen == [2]
    plain = Encoder("default", small_batch=0)
    assert plain.small_batch_threads() == 2
    one = np.stack([enc.encode([t])[0] for t in TEXTS])
    assert np.allclose(one, plain.encode(TEXTS), atol=1e-5)
    assert np.allclose(enc.encode(TEXTS), plain.encode(TEXTS), atol=1e-5)


def test_the_setting_chooses_where_small_batches_run(tmp_path: Path) -> None:
    # lazy: torch takes seconds to import; the encoder module imports it the same way
    import torch

    torch.set_num_threads(2)
    base = Settings(data_dir=tmp_path, encoder_model="default")
    own = encoder_for(base)
    caller = encoder_for(base.model_copy(update={"encoder_small_batch": 0}))
    assert own.small_batch == 4 and own.small_batch_threads() == 1
    assert caller.small_batch == 0 and caller.small_batch_threads() == 2


ONNX_MISSING = onnx_available()


@pytest.mark.skipif(ONNX_MISSING is not None, reason=f"ONNX runtime: {ONNX_MISSING}")
def test_onnx_runtime_encodes_small_batches_with_torchs_vectors(tmp_path: Path) -> None:
    """RECSMITH_ENCODER_RUNTIME=onnx: every batch runs on ONNX Runtime (the same float
    model exported on first use) with torch's vectors, so the model id stays; a second
    encoder reuses the export."""
    enc = Encoder("default", runtime="onnx", onnx_dir=tmp_path / "onnx", small_batch=4)
    ref_enc = Encoder("default", small_batch=4)
    assert enc.runtime == "onnx" and enc.model_id == ref_enc.model_id
    ref = ref_enc.encode(TEXTS)
    one = np.stack([enc.encode([t])[0] for t in TEXTS])
    assert enc.onnx_calls == len(TEXTS) == enc.model_calls
    assert np.abs(one - ref).max() <= 1e-4
    assert (one * ref).sum(1).min() >= 0.9999
    # A padded small batch (the long text truncated at max_length) also runs on ORT.
    padded = enc.encode([TEXTS[3], TEXTS[4], TEXTS[0]])
    assert enc.onnx_calls == len(TEXTS) + 3
    assert np.abs(padded - ref[[3, 4, 0]]).max() <= 1e-4
    # More than small_batch texts: ORT too, on the caller's thread, in calls of ONNX_BATCH.
    enc.batch_size = 2
    assert np.abs(enc.encode(TEXTS) - ref).max() <= 1e-4
    assert enc.onnx_calls == enc.model_calls == 2 * len(TEXTS) + 3
    exported = tmp_path / "onnx" / "model.onnx"
    mtime = exported.stat().st_mtime_ns
    again = Encoder("default", runtime="onnx", onnx_dir=tmp_path / "onnx", small_batch=4)
    assert exported.stat().st_mtime_ns == mtime
    assert (
        np.abs(
            again.encode_queries(["rain jacket"]) - ref_enc.encode_queries(["rain jacket"])
        ).max()
        <= 1e-4
    )
    assert again.onnx_calls == 1


def test_onnx_runtime_refuses_what_it_cannot_run() -> None:
    assert Settings().encoder_runtime == "auto"
    with pytest.raises(ValueError, match="runtime"):
        Encoder("default", runtime="tensorrt")


@pytest.mark.skipif(ONNX_MISSING is not None, reason=f"ONNX runtime: {ONNX_MISSING}")
def test_auto_runtime_is_onnx_where_it_can_be_and_torch_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default: ONNX Runtime for a local model (float or int8, with or without small
    batches); torch when the float export fails (a warning, not a failed start; int8 fails
    instead, as torch's int8 is another model)."""
    enc = Encoder("default", runtime="auto", onnx_dir=tmp_path / "onnx", small_batch=4)
    assert enc.runtime == "onnx"
    enc.encode(["rain jacket"])
    assert enc.onnx_calls == 1
    q8 = Encoder("default+int8", runtime="auto", onnx_dir=tmp_path / "q8")
    assert q8.runtime == "onnx" and q8.model_id.endswith(f"+{encoder_onnx.INT8_RECIPE}")
    plain = Encoder("default", runtime="auto", onnx_dir=tmp_path / "onnx", small_batch=0)
    assert plain.runtime == "onnx"
    plain.encode(TEXTS[:2])
    assert plain.onnx_calls == 2

    def broken(*_args: object, **_kw: object) -> Path:
        raise RuntimeError("the exporter crashed")

    monkeypatch.setattr(encoder_onnx, "ensure_onnx", broken)
    fallback = Encoder("default", runtime="auto", onnx_dir=tmp_path / "other")
    assert fallback.runtime == "torch"
    assert fallback.encode(["rain jacket"]).shape == (1, fallback.dim)
    # int8 has no fallback: torch's int8 vectors are another model's.
    with pytest.raises(RuntimeError, match="crashed"):
        Encoder("default+int8", runtime="auto", onnx_dir=tmp_path / "other")
    with pytest.raises(RuntimeError, match="the exporter crashed"):
        Encoder("default", runtime="onnx", onnx_dir=tmp_path / "other")


@pytest.mark.skipif(ONNX_MISSING is not None, reason=f"ONNX runtime: {ONNX_MISSING}")
def test_onnx_threads_follow_the_setting(tmp_path: Path) -> None:
    """RECSMITH_ENCODER_ONNX_THREADS: 0 (the default) = torch's process count (one per
    core); a number = that many; either way the vectors are the same."""
    # lazy: torch takes seconds to import; the encoder module imports it the same way
    import torch

    torch.set_num_threads(2)
    base = Settings(data_dir=tmp_path, encoder_model="default")
    one = encoder_for(base.model_copy(update={"encoder_onnx_threads": 1}))
    two = encoder_for(base)
    assert (one.runtime, one.onnx_threads) == ("onnx", 1)
    assert (two.runtime, two.onnx_threads) == ("onnx", 2)
    a, b = one.encode_uncached(["rain jacket"]), two.encode_uncached(["rain jacket"])
    assert np.abs(a - b).max() <= 1e-5 and one.onnx_calls == two.onnx_calls == 1
