"""`recsmith models …` and `recsmith vllm …`."""

import typer

models_app = typer.Typer(help="Prepare and inspect the generative models.", no_args_is_help=True)
vllm_app = typer.Typer(help="Run a local vLLM server with the prepared model.", no_args_is_help=True)
