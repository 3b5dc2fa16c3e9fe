"""`recsmith eval …`."""

import typer

eval_app = typer.Typer(help="Offline evaluation on real data.", no_args_is_help=True)
