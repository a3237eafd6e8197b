"""``collapse-probe embeddings``: the spectrum of embeddings on disk, any size, any number of processes."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import click
from collapse_probe_cli import options

DEFAULT_OUT = "collapse_probe_out"


def _first_missing(path: str) -> Path | None:
    """The highest folder of ``path`` that does not exist yet (what creating it would add)."""
    missing = None
    for folder in [Path(path).absolute(), *Path(path).absolute().parents]:
        if folder.exists():
            break
        missing = folder
    return missing


def check_out(ctx: click.Context, param: click.Parameter | None, value: str | None) -> str | None:
    """Click callback: ``--out`` created and checked before any work; what it created is noted so
    that a refused run leaves nothing behind (:func:`removed_if_failed`)."""
    if value is not None and not ctx.resilient_parsing:
        ctx.meta.setdefault("created_out", _first_missing(value))
        options.ensure_writable_folder(value, "--out")
    return value


@contextmanager
def removed_if_failed(ctx: click.Context):
    """On an error, remove the folders ``--out`` created if nothing was written into them."""
    try:
        yield
    except BaseException:
        created = ctx.meta.get("created_out")
        if created is not None and created.is_dir() and not any(p.is_file() for p in created.rglob("*")):
            shutil.rmtree(created, ignore_errors=True)
        raise


def shard_order_line(shardset) -> str:
    """The order the shards are read in (first five and last two when there are many)."""
    from collapse_probe.embeddings.shards import dtype_name

    names = [f"{s.label} ({s.rows})" for s in shardset.shards]
    shown = names if len(names) <= 10 else [*names[:5], f"... {len(names) - 7} more ...", *names[-2:]]
    dtypes = ", ".join(sorted({dtype_name(s.dtype) for s in shardset.shards}))
    return (f"reading {len(names)} shard(s) in this order ({shardset.rows} rows x {shardset.dim}, {dtypes}): "
            + ", ".join(shown))


@click.command("embeddings")
@click.argument("sources", nargs=-1, required=True, metavar="FILE|FOLDER|GLOB...")
@click.option("--key", help="Tensor name in a .pt/.safetensors file or .npz member holding several (refused without "
                            "it unless one is called 'embeddings'); in a clip-retrieval folder img_emb or text_emb.")
@click.option("--column", metavar="NAME|GLOB",
              help="Parquet: the embedding column (a list or fixed-size-list column), or a glob such as 'dim_*' "
                   "for one column per dimension [default: the one list column].")
@click.option("--id-column", metavar="NAME",
              help="Parquet column of row ids (clip-retrieval: of metadata/metadata_{i}.parquet): hashed into the "
                   "result and written to --out/ids.jsonl, so that `compare` can refuse sets of other items.")
@click.option("--quantised", is_flag=True,
              help="Integer arrays are quantised embeddings (the spectrum is that of the integer codes); without "
                   "it they are refused, as ids or labels usually are.")
@click.option("--name", help="Label of this spectrum [default: the file or folder name].")
@options.center
@options.normalize
@options.skip_nonfinite
@options.groups
@click.option("--memory-budget", default="256MB", show_default=True, metavar="SIZE",
              help="Memory for rows in flight (256MB, 2GB, 1GiB): the peak memory is this plus the d x d "
                   "float64 matrices, whatever the input size.")
@click.option("--part", metavar="I/K",
              help="Read part I (from 0) of K equal row ranges of all the shards, e.g. a SLURM array task's "
                   "share; save it with --save-state and combine the parts with `collapse-probe merge`.")
@options.device
@click.option("--save-state", type=click.Path(dir_okay=False), metavar="FILE", callback=options.check_out_file,
              help="Also write the mergeable float64 state of the rows read (count, mean, M2 and provenance) "
                   "for `collapse-probe merge`; --out is then written only when given.")
@click.option("--out", type=click.Path(file_okay=False), default=None, metavar="DIR", callback=check_out,
              help=f"Folder for spectrum.json/.csv/.png (and ids.jsonl) [default: {DEFAULT_OUT}, none with "
                   "--save-state]; created and checked before any work, removed again if the run is refused.")
@options.as_json
@options.quiet
@click.pass_context
def embeddings(ctx: click.Context, sources: tuple[str, ...], out: str | None, save_state: str | None,
               as_json: bool, quiet: bool, **values) -> None:
    """The spectrum report of (N, d) embeddings on disk: files, folders, globs, any size.

    Reads .npy, .npz, .pt, .safetensors and parquet shards (pip install 'collapse-probe[parquet]')
    and the clip-retrieval layout (img_emb/img_emb_{i}.npy beside metadata/metadata_{i}.parquet)
    in chunks under --memory-budget, in a printed, stable order (natural order within a folder or
    glob). float16/bfloat16 rows are cast to float64 exactly. Under torchrun each rank reads its
    share of the rows and the moments are all-reduced; rank 0 writes the files.

    \b
    Examples:
      collapse-probe embeddings val_embeddings.npy --out probe_out
      collapse-probe embeddings laion_dump/ --id-column image_path --out laion_out
      collapse-probe embeddings 'shards/*.parquet' --column embedding --memory-budget 1GB
      collapse-probe embeddings 'img_emb/*.npy' --part 3/16 --save-state parts/3.pt
      torchrun --nproc-per-node 8 -m collapse_probe_cli.main embeddings img_emb/ --out out
      collapse-probe embeddings feats.safetensors --key projector --normalize --json
    """
    if out is None and save_state is None:
        out = check_out(ctx, None, DEFAULT_OUT)
    with removed_if_failed(ctx):
        _run(list(sources), out, save_state, as_json, quiet, values)


def _run(sources: list[str], out: str | None, save_state: str | None, as_json: bool, quiet: bool, values) -> None:
    from collapse_probe._utils.ranks import is_distributed
    from collapse_probe.embeddings import make_options, read_part, resolve

    chosen = make_options(**values, progress=not quiet)
    shardset = resolve(sources, key=chosen.key, column=chosen.column, id_column=chosen.id_column,
                       quantised=chosen.quantised)
    if save_state is not None and chosen.groups is not None:
        from collapse_probe.errors import CollapseProbeError

        raise CollapseProbeError("--save-state with --groups: save each part without --groups and merge them with "
                                 "`collapse-probe merge --jackknife` (each part one group)")
    joined_here = not is_distributed()
    try:
        announce = None if quiet else lambda shards: click.echo(shard_order_line(shards), err=True)
        state = read_part(shardset, chosen, announce)
        _finish(state, chosen, out, save_state, as_json, quiet)
    finally:
        if joined_here and is_distributed():  # torchrun: leave the job we joined, on every path
            import torch.distributed as dist

            dist.destroy_process_group()


def _finish(state, chosen, out: str | None, save_state: str | None, as_json: bool, quiet: bool) -> None:
    from collapse_probe._utils.ranks import is_main_process, world_size
    from collapse_probe.embeddings import record_ids

    if not is_main_process():  # every rank holds the synced moments; rank 0 solves, reports and writes
        return
    if chosen.id_column is not None:
        record_ids(state, chosen.id_column, None if out is None else Path(out) / "ids.jsonl")
    spectrum = state.spectrum()
    _report(spectrum, state.provenance, out, save_state, state, as_json, quiet, world_size())


def _report(spectrum, provenance, out, save_state, state, as_json: bool, quiet: bool, world: int) -> None:
    from collapse_probe.pipeline.outputs import (
        ProbeResult,
        format_table,
        json_report,
        nonfinite_notes,
        sample_limit_notes,
        write_outputs,
    )

    label = spectrum.layer or "embeddings"
    source = {"embeddings": provenance["sources"], "shape": [spectrum.n_samples + spectrum.n_skipped_nonfinite,
                                                             provenance["dim"]],
              "layout": provenance["layout"], "n_shards": provenance["n_shards"], "world_size": world}
    result = ProbeResult({label: spectrum}, source=source)
    if as_json:
        click.echo(json_report(result))
    elif not quiet:
        click.echo(format_table(result.spectra))
    if not quiet:
        notes = [*nonfinite_notes(result.spectra), *sample_limit_notes(result.spectra)]
        for note in notes:
            click.echo(f"Warning: {note}", err=True)
        if provenance["norms"]["unit_norm"]:
            click.echo(f"Note: {label}: {provenance['norms']['note']}", err=True)
    written = []
    if save_state is not None:
        written.append(str(state.save(save_state)))
    if out is not None:
        written += [str(p) for p in write_outputs(result, out).values()]
        if provenance.get("ids") and provenance["ids"].get("file"):
            written.append(str(Path(out) / provenance["ids"]["file"]))
    if not quiet and written:
        click.echo(f"wrote {', '.join(written)}", err=True)
