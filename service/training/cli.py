"""`recsmith train …`."""

import typer

train_app = typer.Typer(help="Train the sequential retriever and the LoRA reranker.", no_args_is_help=True)
