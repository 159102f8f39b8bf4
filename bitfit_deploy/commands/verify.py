"""`bitfit-deploy verify`: hash every file of a bundle against its manifest, trusting no marker."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
def command(bundle: Path) -> None:
    """Check every file of BUNDLE (all variants, baked graphs, shipped tasks) against its sha256.

    A runtime checks only the files it loads and skips files whose verified marker still
    matches; this hashes them all, and refreshes the markers, so a later open starts fast.
    """
    from bitfit_deploy.integrity import verify_files
    from bitfit_deploy.manifest import read_manifest

    manifest = read_manifest(bundle, verify=False)
    hashed = verify_files(bundle, manifest.files, manifest.files, use_markers=False)
    size = sum((bundle / rel).stat().st_size for rel in hashed)
    click.echo(f"{bundle}: all {len(hashed)} files ({size / 2**20:.1f} MiB) match manifest.json")
