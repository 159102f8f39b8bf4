"""`bitfit-deploy verify`: hash every file of a bundle against its manifest, trusting no marker,
then open each variant as a runtime would."""

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
    from bitfit_deploy.errors import BitFitError, BundleError
    from bitfit_deploy.integrity import verify_files
    from bitfit_deploy.manifest import read_manifest

    manifest = read_manifest(bundle, verify=False)
    # The listed files and every file a runtime may load: one without a sha256 fails too.
    files = list(dict.fromkeys([*manifest.files, *manifest.referenced_files()]))
    failures = []
    for rel in files:
        try:
            verify_files(bundle, manifest.files, [rel], use_markers=False)
        except BundleError as exc:
            failures.append(str(exc))
    if failures:
        raise BundleError(f"{len(failures)} of {len(files)} files failed: " + " | ".join(failures))
    # The files are whole; now what the runtime checks at open (graph inputs and base widths
    # against the manifest, the shipped tasks against the bundle), for every variant.
    from bitfit_deploy.runtime import Runtime

    for variant in manifest.variants:
        try:
            Runtime(bundle, variant=variant, threads=1, check_int8_ranges=False)
        except BitFitError as exc:
            raise BundleError(f"the {variant} variant does not open: {exc}") from exc
    size = sum((bundle / rel).stat().st_size for rel in files)
    click.echo(
        f"{bundle}: all {len(files)} files ({size / 2**20:.1f} MiB) match manifest.json, and "
        f"every variant opens ({', '.join(manifest.variants)})"
    )
