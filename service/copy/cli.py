"""`recsmith copy …`."""

import typer

copy_app = typer.Typer(help="Generate, store and export product copy.", no_args_is_help=True)
