"""`bitfit-deploy cache`: what the runtime keeps between processes (verified markers, optimized
graphs), how much disk it takes, and `--clear` to remove it."""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path

import click


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


@click.command()
@click.option("--clear", is_flag=True, help="Remove every verified marker and optimized graph.")
def command(clear: bool) -> None:
    """Show the runtime's cache folder, its verified markers and optimized graphs, and their size.

    Both only make opening a bundle faster: with them gone, the next open hashes the files it
    loads and optimizes the graph again (a slower first start), and nothing else changes.
    """
    from bitfit_deploy.integrity import CACHE_ENV, marker_dir, marker_files
    from bitfit_deploy.runtime import optimized_graphs

    folder = marker_dir()
    if folder is None:
        click.echo(f"the cache is off (${CACHE_ENV} is set empty): nothing is kept between opens.")
        return
    if folder.exists() and not folder.is_dir():
        raise click.ClickException(
            f"the cache folder {folder} is a file, so nothing is cached: every open hashes the "
            f"files it loads. Point ${CACHE_ENV} at a folder (or remove the file)."
        )
    markers = marker_files(folder)
    graphs = optimized_graphs.entries(folder / optimized_graphs.FOLDER)
    marker_bytes = sum(p.stat().st_size for p in markers)
    graph_sizes = [_size(g) for g in graphs]
    if clear:
        failed: list[str] = []
        for path in [*markers, *graphs]:
            try:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            except OSError as exc:  # in use (Windows), or a folder we may not write
                failed.append(f"{path.name} ({exc.strerror or exc})")
        if failed:
            raise click.ClickException(
                f"could not remove {len(failed)} of {len(markers) + len(graphs)} cache entries "
                f"in {folder}: {', '.join(failed[:3])}. Stop the processes using them, or check "
                "the folder's permissions, and run `bitfit-deploy cache --clear` again."
            )
        click.echo(
            f"removed {len(markers)} verified markers and {len(graphs)} optimized graphs "
            f"({_mib(marker_bytes + sum(graph_sizes))}) from {folder}"
        )
        return
    click.echo(f"cache folder: {folder} (${CACHE_ENV} moves it; set empty, it is off)")
    click.echo(f"verified markers: {len(markers)} ({marker_bytes / 1024:.0f} KiB)")
    click.echo(
        f"optimized graphs: {len(graphs)} ({_mib(sum(graph_sizes))}); the {optimized_graphs.KEEP} "
        f"most recently used are kept; ${optimized_graphs.ENV}=0 turns them off"
    )
    for graph, size in zip(graphs, graph_sizes, strict=True):
        used = datetime.datetime.fromtimestamp(graph.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
        click.echo(f"  {graph.name}  {_mib(size):>10}  last used {used}")
