"""`recsmith train …`: the sequential retriever (SASRec) and the LoRA-tuned reranker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from service.catalog.store import CatalogStore
from service.cli_support import fail, out, progress_bar
from service.config import Settings, get_settings
from service.offline.datasets import DatasetError, load
from service.retrieval.sequential import read_model
from service.training.sequential import (
    EpochReport,
    SASRecConfig,
    SequentialModelError,
    data_version,
    model_dir,
    sequences_from_log,
    train_on_sequences,
    train_sequential,
)
from service.vocab import RankerLoss

train_app = typer.Typer(
    help="Train the sequential retriever and the LoRA reranker.", no_args_is_help=True
)

DatasetOpt = Annotated[
    str | None,
    typer.Option(help="train on a data set (ml-100k | book-crossing) instead of the store's log"),
]
DataDirOpt = Annotated[
    Path | None, typer.Option(help="data directory to write the model into (default: settings)")
]
TieOpt = Annotated[
    str, typer.Option(help="--dataset only: order of equal timestamps, item_id | original")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the metrics as JSON")]


def settings_for(data_dir: Path | None) -> Any:
    base = get_settings()
    if data_dir is None:
        s = base
    else:  # another data dir, but the prepared base LLM stays where it is (no re-conversion)
        # lazy: +0.06 s on every recsmith command (eval/results/2026-11-30-imports.md)
        from service.llm.prepare import models_dir

        s = Settings(data_dir=data_dir, models_dir=models_dir(base))
    s.ensure_dirs()
    return s


def load_dataset_split(name: str, tie_break: str) -> tuple[Any, Any]:
    # lazy: `recsmith` imports this module at start-up; the split pulls scipy
    from service.offline.split import leave_last_two_out

    if tie_break not in ("item_id", "original"):
        raise typer.BadParameter("use item_id or original", param_hint="--tie-break")
    try:
        ds = load(name)
    except DatasetError as e:
        raise fail(str(e)) from None
    return ds, leave_last_two_out(ds, tie_break)  # type: ignore[arg-type]


def _rows(ds: Any) -> list[tuple[str, str, str, Any]]:
    return [(i.user_id, i.product_id, i.event.value, i.ts) for i in ds.interactions]


def _metric_table(title: str, parts: dict[str, dict[str, float]]) -> Table:
    t = Table(title=title)
    keys = ["recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr"]
    t.add_column("target")
    for k in keys:
        t.add_column(k, justify="right")
    for name, m in parts.items():
        if m:
            t.add_row(name, *(f"{m.get(k, float('nan')):.4f}" for k in keys))
    return t


@train_app.command("retriever")
def retriever(
    epochs: Annotated[
        int, typer.Option(help="maximum epochs (early stopping may end sooner)")
    ] = 200,
    max_minutes: Annotated[float, typer.Option(help="time budget for training")] = 3.0,
    dataset: DatasetOpt = None,
    tie_break: TieOpt = "item_id",
    loss: Annotated[
        str, typer.Option(help="ce (full softmax) | bce (one sampled negative)")
    ] = "ce",
    lr: Annotated[float, typer.Option(help="Adam learning rate")] = 3e-3,
    patience: Annotated[int, typer.Option(help="epochs without a better val NDCG@10")] = 5,
    seed: int = 0,
    threads: Annotated[int, typer.Option(help="torch threads; 0 = auto (idle cores)")] = 0,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train the SASRec retriever on the interaction log; saves DATA_DIR/models/sequential."""
    if loss not in ("ce", "bce"):
        raise typer.BadParameter("use ce or bce", param_hint="--loss")
    settings = settings_for(data_dir)
    cfg = SASRecConfig(
        loss=loss,
        lr=lr,
        max_epochs=epochs,
        max_minutes=max_minutes,  # type: ignore[arg-type]
        patience=patience,
        seed=seed,
        threads=threads,
    )
    with progress_bar() as bar:
        task = bar.add_task("loading the interaction log", total=epochs)

        def report(r: EpochReport) -> None:
            bar.update(
                task,
                completed=r.epoch,
                description=f"epoch {r.epoch}  loss {r.loss:.4f}  "
                f"val NDCG@10 {r.val.get('ndcg@10', 0):.4f}  (best: epoch {r.best_epoch})",
            )

        try:
            if dataset:
                ds, split = load_dataset_split(dataset, tie_break)
                rows = _rows(ds)
                bar.update(task, description=f"training on {dataset} ({len(split.users)} users)")
                metrics = train_on_sequences(
                    split.item_ids,
                    split.sequences,
                    settings,
                    data_version(rows),
                    len(rows),
                    report,
                    cfg,
                    extra={"source": "dataset", "dataset": dataset, "tie_break": tie_break},
                )
            else:
                rows = CatalogStore(settings.db_url).all_interactions()
                if not rows:
                    raise fail("the store has no interactions: `recsmith ingest interactions …`")
                bar.update(task, description=f"training on the store's log ({len(rows)} rows)")
                metrics = train_sequential(rows, settings, report, cfg)
        except SequentialModelError as e:
            raise fail(str(e)) from None
        bar.update(task, completed=metrics["epochs_run"], total=metrics["epochs_run"])
    if as_json:
        out.print_json(json.dumps({k: v for k, v in metrics.items() if k != "history"}))
        return
    out.print(
        _metric_table(
            "SASRec (leave-one-out)", {"validation": metrics["val"], "test": metrics["test"]}
        )
    )
    out.print(
        f"best epoch {metrics['best_epoch']} of {metrics['epochs_run']} ({metrics['stopped']}), "
        f"{metrics['train_s']} s; {metrics['users_evaluated']} users evaluated; "
        f"saved to {metrics['path']}"
    )


@train_app.command("reranker")
def reranker(
    examples: Annotated[int, typer.Option(help="training prompts (one per sampled user)")] = 300,
    val_examples: Annotated[int, typer.Option(help="validation prompts")] = 50,
    epochs: int = 1,
    max_minutes: Annotated[
        float | None, typer.Option(help="stop (resumable) after M minutes")
    ] = None,
    lr: float = 5e-4,
    batch_size: Annotated[int, typer.Option(help="prompts per optimizer step")] = 8,
    micro_batch: Annotated[int, typer.Option(help="prompts per forward pass")] = 1,
    rank: Annotated[int, typer.Option("--rank", help="LoRA rank r")] = 8,
    layers: Annotated[
        int | None, typer.Option(help="adapters only in the top N blocks (faster on CPU)")
    ] = None,
    checkpoint_every: Annotated[int, typer.Option(help="optimizer steps per checkpoint")] = 5,
    loss: Annotated[
        RankerLoss,
        typer.Option(help="labels (CE over the 20 label tokens, as served) | vocab (full CE)"),
    ] = RankerLoss.labels,
    fresh: Annotated[bool, typer.Option(help="ignore an existing checkpoint")] = False,
    dataset: DatasetOpt = None,
    tie_break: TieOpt = "item_id",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    threads: Annotated[int, typer.Option(help="CPU torch threads; 0 = auto")] = 0,
    seed: int = 0,
    candidates: Annotated[
        str,
        typer.Option(
            help="--dataset only: sasrec (the saved SASRec's top 20, one prompt per user) | "
            "pipeline (the served pipeline's top 20 at several cut points per user)"
        ),
    ] = "sasrec",
    users: Annotated[
        int | None,
        typer.Option(min=1, help="--candidates pipeline: training users (default: all)"),
    ] = None,
    cuts_per_user: Annotated[
        int, typer.Option(min=1, help="--candidates pipeline: cut points per training user")
    ] = 4,
    minutes: Annotated[
        float | None, typer.Option(help="time budget in minutes (same as --max-minutes)")
    ] = None,
    pipeline_dir: Annotated[
        Path | None,
        typer.Option(
            help="--candidates pipeline: the pipeline store (built on first use; default "
            "DATA_DIR/<dataset>-pipeline)"
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """LlamaRec-tune the verbalizer's LLM with LoRA; saves DATA_DIR/models/reranker-lora.

    Candidates come from the trained SASRec with --dataset (train it first with
    `recsmith train retriever --dataset …`), or with --candidates pipeline from the served
    pipeline's shortlist (fitted fusion) at --cuts-per-user cut points of --users users
    (prompts whose answer the shortlist missed are skipped; candidates shuffled), else
    from the service's retriever. A re-run with the same options continues from the last
    checkpoint."""
    # lazy: `recsmith` imports this module at start-up; lora pulls the ranking stack (scipy)
    from service.training.lora import (
        AdapterError,
        LoraTrainConfig,
        StepReport,
        VLLMLora,
        build_examples,
        train_reranker,
    )

    if candidates not in ("sasrec", "pipeline"):
        raise typer.BadParameter("use sasrec or pipeline", param_hint="--candidates")
    if candidates == "pipeline" and not dataset:
        raise typer.BadParameter("needs --dataset", param_hint="--candidates pipeline")
    if minutes is not None:
        max_minutes = minutes
    settings = settings_for(data_dir)
    cfg = LoraTrainConfig(
        examples=examples,
        val_examples=val_examples,
        epochs=epochs,
        max_minutes=max_minutes,
        lr=lr,
        batch_size=batch_size,
        micro_batch=micro_batch,
        r=rank,
        alpha=2 * rank,
        layers=layers,
        checkpoint_every=checkpoint_every,
        seed=seed,
        device=device,
        threads=threads,
        loss=loss,
    )
    with progress_bar() as bar:
        task = bar.add_task("building prompts", total=None)
        try:
            if dataset and candidates == "pipeline":
                root = pipeline_dir or Path(settings.data_dir) / f"{dataset}-pipeline"
                train, val, products, source = _pipeline_source(
                    dataset,
                    root,
                    users,
                    cuts_per_user,
                    cfg.val_examples,
                    seed,
                    lambda m: bar.update(task, description=m),
                )
            else:
                if dataset:
                    sequences, retrieve, products, source = _dataset_source(
                        dataset, tie_break, settings
                    )
                else:
                    sequences, retrieve, products, source = _store_source(settings)
                train, val = build_examples(
                    sequences, retrieve, cfg.examples, cfg.val_examples, cfg.candidates, cfg.seed
                )
            cfg.examples = len(train)
            bar.update(task, description=f"tuning on {len(train)} prompts (loading the model)")

            def report(r: StepReport) -> None:
                desc = r.note or f"step {r.step}  loss {r.loss:.4f}"
                bar.update(task, total=r.total_steps, completed=r.step, description=desc)

            metrics = train_reranker(
                train,
                val,
                products,
                settings,
                report,
                cfg,
                fresh=fresh,
                extra={"candidates_from": source},
            )
        except AdapterError as e:
            raise fail(str(e)) from None
    if as_json:
        out.print_json(json.dumps({k: v for k, v in metrics.items() if k != "losses"}))
        return
    t = Table(title="verbalizer on validation prompts (ground truth among the 20)")
    for col in ("", "accuracy", "ndcg@10", "mrr", "answer logprob"):
        t.add_column(col, justify="right")
    for name in ("val_before", "val_after"):
        m = metrics.get(name) or {}
        if m:
            t.add_row(
                name.replace("val_", ""),
                f"{m['accuracy']:.3f}",
                f"{m['ndcg@10']:.4f}",
                f"{m['mrr']:.4f}",
                f"{m['answer_logprob']:.3f}",
            )
    out.print(t)
    state = "complete" if metrics["complete"] else "stopped early: re-run to continue"
    out.print(
        f"{metrics['steps']}/{metrics['total_steps']} steps ({state}), "
        f"{metrics['train_s']} s on {metrics['device']}; adapter in {metrics['path']}"
    )
    out.print(
        "vLLM: "
        + " ".join(VLLMLora(Path(metrics["path"]), cfg.r).args())
        + " (then RECSMITH_LLM_SERVED_NAME stays; the verbalizer asks for model "
        "'reranker')"
    )


def _pipeline_source(
    name: str,
    root: Path,
    users: int | None,
    cuts: int,
    n_val: int,
    seed: int,
    progress: Any,
) -> tuple[list[Any], list[Any], dict[str, Any], str]:
    """Prompts from the served pipeline's shortlists (service.training.rerank_data): the
    first `users` training users of the seeded order, each with up to `cuts` cut points."""
    # lazy: `recsmith` imports this module at start-up; these pull the Application
    from service.training.lora import RankExample
    from service.training.rerank_data import make_cases_file

    cases, info = make_cases_file(
        root / "cases.json", root, name, None, cuts, max(n_val, 100), seed, progress
    )
    keep: list[str] = []
    for c in cases["train"]:
        if c.user not in keep:
            if users is not None and len(keep) == users:
                break
            keep.append(c.user)
    chosen = set(keep)
    train = [
        RankExample(c.history, c.candidates, c.target) for c in cases["train"] if c.user in chosen
    ]
    val = [RankExample(c.history, c.candidates, c.target) for c in cases["val"][:n_val]]
    src = (
        f"served pipeline top-20 (fitted fusion), {len(keep)} users x up to {cuts} cut points "
        f"({info.get('cut_points_tried')} cut points tried for all users)"
    )
    return train, val, {p.id: p for p in load(name).products}, src


def _dataset_source(name: str, tie_break: str, settings: Any) -> tuple[Any, Any, Any, str]:
    """ML-100k & co: sequences from the eval split, candidates from the saved SASRec."""
    # lazy: `recsmith` imports this module at start-up; lora pulls the ranking stack (scipy)
    from service.training.lora import AdapterError

    ds, split = load_dataset_split(name, tie_break)
    try:
        scorer = read_model(model_dir(settings))
    except SequentialModelError as e:
        raise AdapterError(f"{e} (with --dataset {name})") from None
    if not set(scorer.item_ids) >= {p.id for p in ds.products[:50]}:
        raise AdapterError(
            f"the saved SASRec was not trained on {name}: "
            f"`recsmith train retriever --dataset {name}` first"
        )
    seqs = [[split.item_ids[i] for i in s] for s in split.sequences]

    def retrieve(history: list[str], k: int) -> list[str]:
        return [p for p, _ in scorer.top_k(history, k, lambda _p: True)]

    return seqs, retrieve, {p.id: p for p in ds.products}, f"SASRec trained on {name}"


def _store_source(settings: Any) -> tuple[Any, Any, Any, str]:
    """The service's own log; candidates from its retriever, as the verbalizer sees them."""
    # lazy: `recsmith` imports this module at start-up; the engine pulls scipy and the indexes
    from service.recsmith import Recsmith
    from service.retrieval.retriever import RetrievalRequest

    rs = Recsmith(settings)
    rs.ensure_ready()
    item_ids, _users, idx_seqs = sequences_from_log(rs.store.all_interactions())
    seqs = [[item_ids[i] for i in s] for s in idx_seqs]

    def retrieve(history: list[str], k: int) -> list[str]:
        req = RetrievalRequest(history=history[-500:], k=k)
        hist = [(p, "view") for p in history]
        return [c.product_id for c in rs.retriever.candidates(req, history=hist)]

    return seqs, retrieve, rs.store.get_products(item_ids), "recsmith retriever"
