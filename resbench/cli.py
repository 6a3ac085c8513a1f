"""The `resbench` command line: a thin Typer layer, and the only module that prints rich output.

Each command loads a config, calls one function of the library and renders its result. A
`ResbenchError` becomes one short message on stderr and its exit code (2: bad config or parameter,
1: the run failed), never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from resbench import config as config_mod
from resbench.config import ResbenchError
from resbench.models import describe

app = typer.Typer(
    help="Reproduce the degradation experiment of He et al. 2015 (§4.2): plain vs residual CIFAR nets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config value, e.g. --set optim.lr=0.05 (repeatable)."),
]
PresetOption = Annotated[
    str | None, typer.Option("--preset", help="Overlay a bundled preset: quick (CPU-sized) or paper.")
]


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a `ResbenchError` into a message on stderr and its exit code."""
    try:
        yield
    except ResbenchError as err:
        err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(err.exit_code) from None


@app.command()
def models() -> None:
    """List the bundled configs: depth, block, shortcut, parameters and MACs."""
    with user_errors():
        table = Table(title="Bundled configs (resbench show NAME for details)")
        for column in ("name", "depth", "block", "net", "shortcut", "params", "MACs"):
            right = column in ("depth", "params", "MACs")
            table.add_column(column, justify="right" if right else "left", no_wrap=column == "name")
        for name in config_mod.bundled_names():
            m = config_mod.load(name).model
            arch = describe(m)
            table.add_row(
                name,
                str(m.depth),
                m.block,
                "residual" if m.residual else "plain",
                m.shortcut or "-",
                f"{arch.params:,}",
                f"{arch.macs / 1e6:,.2f}M",
            )
        console.print(table)


@app.command()
def show(
    config: Annotated[
        str, typer.Argument(help="A bundled config name (resnet56), a YAML path or a run directory.")
    ],
    set_: SetOption = None,
    preset: PresetOption = None,
) -> None:
    """Print the resolved config as YAML, then a summary of the architecture it builds."""
    with user_errors():
        cfg = config_mod.load(config, set_ or [], preset)
        arch = describe(cfg.model)
    console.print(f"# resolved config: {cfg.run.name}", style="dim", highlight=False)
    console.print(cfg.to_yaml(), highlight=False, markup=False)
    kind = f"residual, shortcut {cfg.model.shortcut}" if cfg.model.residual else "plain (no shortcuts)"
    table = Table(title=f"{cfg.run.name}: {cfg.model.block} blocks, {kind}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = {
        "depth": f"{arch.depth} (n = {cfg.model.n})",
        "weighted layers": str(arch.weighted_layers),
        "blocks per stage": " / ".join(map(str, arch.blocks_per_stage)),
        "planes per stage": " / ".join(str(cfg.model.width * 2**i) for i in range(3)),
        "shortcut at stage 1→2, 2→3": ", ".join(arch.shortcuts),
        "parameters": f"{arch.params:,}",
        "MACs per image": f"{arch.macs:,} ({arch.macs / 1e6:.2f}M multiply-accumulates)",
        "output shape": f"(N, {', '.join(map(str, arch.output_shape))})",
    }
    for key, value in rows.items():
        table.add_row(key, value)
    console.print(table)


def main() -> None:
    app()
