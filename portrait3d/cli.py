"""``portrait3d``: one command with subcommands (generate, batch, serve, faces, eval, info, models).

Commands check what they can before anything heavy loads: ``generate`` reads and validates the
photo and the output folder first (PIL and NumPy only), then the settings, then the models.
Native libraries' log lines are hidden unless ``--verbose``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("GLOG_minloglevel", "2")  # mediapipe's C++ logging
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import typer  # noqa: E402 (after the logging environment above)
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402
from rich.table import Table  # noqa: E402

from .errors import Portrait3DError  # noqa: E402
from .native_stderr import hidden_native_stderr  # noqa: E402

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Turn one portrait photo into a textured, full 360-degree 3D head (glTF).",
)
err = Console(stderr=True)
out = Console()


def _print_result(text: object) -> None:
    """A path or URI on stdout, for scripts: one unwrapped line, no markup read from it."""
    out.print(str(text), soft_wrap=True, markup=False, highlight=False)


def _fail(e: Portrait3DError) -> None:
    err.print(f"[bold red]error[/] ({e.kind}): {escape(str(e))}", soft_wrap=True)
    raise typer.Exit(e.exit_code)


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Unless ``verbose``: no native log lines, and the libraries say only errors."""
    if verbose:
        yield
        return
    for var in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(var, "error")
    with warnings.catch_warnings(), hidden_native_stderr():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        yield


# Shared by several commands.
MODELS_OPTION = typer.Option(
    None, "--models", "-m", help="model root of the paper/tiny profiles: a folder or s3:// prefix"
)
ALLOW_PICKLE_OPTION = typer.Option(
    None,
    "--allow-pickle",
    metavar="ROLE",
    help="let this role's pickled weights run code (only for files you trust); repeatable",
)
VERBOSE_OPTION = typer.Option(False, "--verbose", "-v", help="show the libraries' own log lines and warnings")


def _max_megapixels(overrides: list[str]) -> float:
    """``analysis.max_megapixels`` from the overrides, read without loading the stages (the settings
    check it properly later)."""
    from .pipelines.image_io import DEFAULT_MAX_MEGAPIXELS
    from .pipelines.overrides import parse_overrides

    value = parse_overrides(overrides).get("analysis", {}).get("max_megapixels", DEFAULT_MAX_MEGAPIXELS)
    try:
        return float(value)
    except (TypeError, ValueError):
        return DEFAULT_MAX_MEGAPIXELS


@app.command()
def generate(
    image: Path = typer.Argument(..., help="portrait photo (JPEG, PNG, WebP, ...)"),
    output: Path = typer.Option(Path("out"), "--output", "-o", help="output folder for the head bundle"),
    profile: str = typer.Option("fast", "--profile", "-p", help="method profile (see `portrait3d info`)"),
    seed: int = typer.Option(0, "--seed", help="random seed; the same seed and input give the same head"),
    config: list[str] | None = typer.Option(
        None,
        "--config",
        "-c",
        help="override a setting, stage.field=value (e.g. sculpt.steps=40), "
        "or a JSON file {stage: {field: value}}; repeatable",
    ),
    caption: str | None = typer.Option(
        None,
        "--caption",
        help="text describing the portrait, for the paper profile's prompts "
        "(default: the root's caption model, else 'a person')",
    ),
    models: str | None = MODELS_OPTION,
    allow_pickle: list[str] | None = ALLOW_PICKLE_OPTION,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    verbose: bool = VERBOSE_OPTION,
) -> None:
    """Photo -> OUTPUT/head.glb, head.json, views.png."""
    from .pipelines.image_io import load_image
    from .pipelines.outputs import check_output_dir

    overrides = [*(config or []), *([f"analysis.caption={caption}"] if caption else [])]
    with _quiet(verbose):
        try:
            photo = load_image(image, max_megapixels=_max_megapixels(overrides))
            check_output_dir(output)
            from .pipelines.config import build_profile_config
            from .pipelines.pipeline import Portrait3D, RunContext
            from .pipelines.registry import STAGES

            cfg = build_profile_config(profile, overrides, seed, models, tuple(allow_pickle or ()))
            columns = (
                TextColumn("{task.description:<9}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TextColumn("{task.fields[msg]}"),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=err, disable=quiet) as bar:
                tasks = {s: bar.add_task(s, total=1.0, msg="") for s in STAGES}
                bar.update(tasks["analysis"], msg="loading models")

                def progress(stage: str, frac: float, msg: str) -> None:
                    bar.update(tasks[stage], completed=frac, msg=msg)

                with Portrait3D(cfg) as p3d:
                    result, paths = p3d.generate(photo, output, RunContext(progress=progress))
        except Portrait3DError as e:
            _fail(e)
    t = result.timings
    err.print(f"[green]done[/] in {sum(t.values()):.1f} s: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()))
    for note in result.analysis.notes:
        err.print(f"[yellow]note[/]: {escape(note)}")
    for path in paths.values():
        _print_result(path)


@app.command()
def batch(
    inputs: str = typer.Argument(
        ...,
        metavar="INPUT",
        help="folder, glob, CSV/Parquet manifest of URIs (an optional face column picks each photo's face, "
        "as analysis.face does), or s3:// prefix of portraits",
    ),
    output: str = typer.Argument(..., metavar="OUTPUT", help="local folder or s3:// prefix for the heads"),
    profile: str = typer.Option("fast", "--profile", "-p", help="method profile (see `portrait3d info`)"),
    seed: int = typer.Option(0, "--seed", help="random seed; the same seed and input give the same head"),
    config: list[str] | None = typer.Option(
        None, "--config", "-c", help="override a stage setting, stage.field=value, or a JSON file; repeatable"
    ),
    models: str | None = MODELS_OPTION,
    allow_pickle: list[str] | None = ALLOW_PICKLE_OPTION,
    pool: list[str] | None = typer.Option(
        None,
        "--pool",
        help="override a worker-pool or batch setting, e.g. "
        "geometry.num_gpus=1, texture.accelerator_type=H100, "
        "batch.max_task_retries=3, or a JSON file; repeatable "
        "(`portrait3d info` lists them)",
    ),
    workers: int | None = typer.Option(
        None, "--workers", "-w", help="size of the analysis, geometry and texture pools"
    ),
    address: str | None = typer.Option(
        None, "--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local instance)"
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress display"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="show Ray's logs and progress bars"),
) -> None:
    """A whole dataset -> OUTPUT/heads/<hash>/ bundles and OUTPUT/manifest.parquet (one row per input).

    Rerunning skips every input whose bundle exists with the same settings. Exit status 1 when some
    inputs failed (their rows say why), 2 when the run could not start.
    """
    from . import storage
    from .engine.batch import BatchProgress, list_input_table, run_batch
    from .engine.cluster import connect
    from .engine.config import build_engine_config
    from .pipelines.config import build_profile_config

    try:
        cfg = build_profile_config(profile, config, seed, models, tuple(allow_pickle or ()))
        engine = build_engine_config(profile, pool, workers)
        listing, skipped = list_input_table(inputs)
        output = storage.check_writable(output)
        err.print(
            f"{listing.num_rows} portraits from {inputs}"
            + (f" ({len(skipped)} other files skipped)" if skipped else "")
        )
        where = connect(engine, address, verbose=verbose)
        err.print(f"ray: {where}")
        all_s3 = storage.is_s3(output) and all(map(storage.is_s3, listing.column("input_uri").to_pylist()))
        if not where.startswith("1 node") and not all_s3:
            err.print(
                "[yellow]note[/]: local paths on a multi-node cluster must be storage every node "
                "sees (a shared file system); otherwise use s3://"
            )
        with Progress(
            TextColumn("heads"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f}"),
            TextColumn("{task.fields[msg]}"),
            TimeElapsedColumn(),
            console=err,
            disable=quiet,
        ) as bar:
            task = bar.add_task("heads", total=listing.num_rows, msg="starting workers")

            def on_row(row: dict, p: BatchProgress) -> None:
                bar.update(
                    task,
                    total=p.total,
                    completed=p.done,
                    msg=f"ok {p.ok} (reused {p.reused}) · failed {p.failed} · {p.heads_per_min:.1f} heads/min",
                )
                if row["status"] != "ok":
                    err.print(
                        f"[red]failed[/] {escape(row['input_uri'])}: {row['error_type']}: "
                        f"{escape(row['error_message'])}",
                        soft_wrap=True,
                    )

            summary = run_batch(listing, output, cfg, engine, on_row=on_row, show_ray_progress=verbose)
    except Portrait3DError as e:
        _fail(e)
    p = summary.progress
    err.print(
        f"[green]done[/] in {summary.elapsed_s:.0f} s: {p.ok} ok ({p.reused} reused, {p.made} made), "
        f"{p.failed} failed, {p.heads_per_min:.1f} heads/min"
    )
    _print_result(summary.manifest_uri)
    raise typer.Exit(1 if p.failed else 0)


@app.command()
def faces(
    inputs: str = typer.Argument(
        ..., metavar="INPUT", help="a photo (e.g. a group photo), or a folder, glob, manifest or s3:// prefix of them"
    ),
    config: list[str] | None = typer.Option(
        None, "--config", "-c", help="analysis settings, e.g. analysis.face=2 or analysis.face_tiles=1; repeatable"
    ),
    manifest: Path | None = typer.Option(
        None,
        "--manifest",
        "-m",
        help="write a CSV manifest for `portrait3d batch` instead of tables: a row (path, face) for each face "
        "of each photo that is at least analysis.min_face_px across, so that the batch makes a head of every person",
    ),
    verbose: bool = VERBOSE_OPTION,
) -> None:
    """The faces the analysis finds in a photo, numbered from the left, and the one it would make a head of
    (`analysis.face`: the clearest by default; pick another with `generate -c analysis.face=N`, or per photo
    with a batch manifest's face column, which `--manifest` writes). With several photos, one that cannot
    be read or has no face is reported and skipped, and the exit status is 1."""
    from .engine.batch import list_inputs
    from .pipelines.analysis import MediapipeAnalysis, box_side, faces_from_left
    from .pipelines.config import build_profile_config

    overrides = config or []
    with _quiet(verbose):
        try:
            cfg = build_profile_config("fast", overrides).stages["analysis"]
            photos, _ = list_inputs(inputs)
        except Portrait3DError as e:
            _fail(e)
        stage = MediapipeAnalysis(cfg)
        rows, skipped = [], 0
        try:
            for uri in photos:
                try:
                    found, picked = _faces_in(stage, cfg, uri, choose=manifest is None)
                except Portrait3DError as e:
                    if len(photos) == 1:
                        _fail(e)
                    err.print(f"[yellow]skipped[/] {escape(uri)}: {e.kind}: {escape(str(e))}", soft_wrap=True)
                    skipped += 1
                    continue
                if manifest is None:
                    out.print(_faces_table(found, picked, cfg.face, uri.rsplit("/", 1)[-1]))
                else:
                    by_left = enumerate(faces_from_left(found))
                    rows += [(uri, str(n)) for n, (_, box) in by_left if box_side(box) >= cfg.min_face_px]
        finally:
            stage.close()
    if manifest is not None:
        with open(manifest, "w", newline="") as f:
            csv.writer(f).writerows([("path", "face"), *rows])
        out.print(f"{len(rows)} face(s) of {len(photos) - skipped} photo(s) -> {manifest}")
    if skipped:
        raise typer.Exit(1)


def _faces_in(stage: Any, cfg: Any, uri: str, choose: bool) -> tuple[list[Any], Any]:
    """The faces ``stage`` finds in the photo at ``uri``, and the one ``analysis.face`` picks (when ``choose``;
    else the largest). No face is a NoFaceError."""
    from . import storage
    from .pipelines.image_io import load_image

    photo = load_image(storage.read_bytes(uri), max_megapixels=cfg.max_megapixels, name=uri)
    found = stage.faces_in_photo(photo.pixels, cfg.face_tiles)[0]
    return found, stage.pick_face(photo.pixels, found, cfg.face if choose else "largest", photo.source)[0]


def _faces_table(found: list[Any], picked: Any, how: str, name: str) -> Table:
    from .pipelines.analysis import box_area, faces_from_left

    table = Table(title=f"{len(found)} face(s) in {escape(name)}, N from the left", title_justify="left")
    for col in ("N", "box (x0, y0, x1, y1)", "side", "score", ""):
        table.add_column(col)
    for n, (score, box) in enumerate(faces_from_left(found)):
        mark = f"[green]picked ({escape(how)})[/]" if (score, box) == picked else ""
        side = f"{box_area(box) ** 0.5:.0f}"
        table.add_row(str(n), ", ".join(f"{v:.0f}" for v in box), side, f"{score:.2f}", mark)
    return table


@app.command("eval")
def eval_cmd(
    bundle: Path = typer.Argument(..., help="a head bundle folder (from `portrait3d generate`)"),
    image: Path = typer.Option(..., "--image", "-i", help="the portrait the bundle was made from"),
    as_json: bool = typer.Option(False, "--json", help="print the full metrics as JSON"),
    verbose: bool = VERBOSE_OPTION,
) -> None:
    """Score a head bundle against its portrait; exit status 1 when a target is missed."""
    from .pipelines.evaluate import evaluate

    with _quiet(verbose):
        try:
            m = evaluate(bundle, image)
        except Portrait3DError as e:
            _fail(e)
    if as_json:
        out.print_json(json.dumps(m))
    else:
        table = Table(title=f"{bundle}")
        for col in ("check", "value", "target", "pass"):
            table.add_column(col)
        for name, c in m["checks"].items():
            v = c["value"]
            vs = f"{v:.3f}" if isinstance(v, float) else str(v)
            table.add_row(name, vs, c["target"], "[green]yes[/]" if c["pass"] else "[red]no[/]")
        out.print(table)
        out.print(f"masked PSNR {m['masked_psnr_db']:.2f} dB; same input as generated: {m['same_input']}")
    raise typer.Exit(0 if m["passed"] else 1)


@app.command()
def info(models: str | None = MODELS_OPTION) -> None:
    """Versions, profiles, whether each can run here (and why not), and every setting with its help."""
    from .pipelines.export import library_versions
    from .pipelines.profiles import PROFILES, readiness
    from .pipelines.registry import STAGES, lookup, registered
    from .pipelines.schedule import Schedule
    from .pipelines.settings import help_of

    for k, v in library_versions().items():
        out.print(f"{k:>24} {v}")
    import torch

    out.print(f"{'device':>24} {'cuda: ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}")
    for name, spec in PROFILES.items():
        why = readiness(name, models)
        state = "[green]can run here[/]" if not why else "[red]cannot run here[/]: " + escape("; ".join(why))
        out.print(f"\nprofile [bold]{name}[/]: {state}", soft_wrap=True)
        out.print(f"  {spec.description}")
        for stage in STAGES:
            cls = lookup(stage, spec.impls[stage])
            out.print(f"  {stage}: {spec.impls[stage]}")
            for field, (_typ, default, help_) in help_of(cls.Config).items():
                d = default.to_json() if isinstance(default, Schedule) else default
                out.print(f"    {stage}.{field} = {escape(str(d))}  [dim]{escape(help_)}[/]")
    out.print("\nimplementations: " + "; ".join(f"{s}: {', '.join(registered(s))}" for s in STAGES))
    from .engine.config import POOLS, BatchSettings, PoolConfig, build_engine_config

    eng = build_engine_config("fast")
    out.print("\nworker pools of `portrait3d batch` (--pool pool.field=value; defaults of the fast profile):")
    for pool in (*POOLS, "batch"):
        cls, cfg = (BatchSettings, eng.batch) if pool == "batch" else (PoolConfig, eng.pools[pool])
        for field, (_typ, _default, help_) in help_of(cls).items():
            out.print(f"    {pool}.{field} = {escape(str(getattr(cfg, field)))}  [dim]{escape(help_)}[/]")
    from .serve_app.settings import ServeSettings

    out.print("\nsettings of `portrait3d serve` (--set key=value, or the args of a Serve config file):")
    for field, (_typ, default, help_) in help_of(ServeSettings).items():
        out.print(f"    {field} = {escape(str(default))}  [dim]{escape(help_)}[/]")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="address the HTTP service listens on"),
    port: int = typer.Option(8000, "--port", help="port of the HTTP service"),
    profile: str = typer.Option("fast", "--profile", "-p", help="the profile the service runs"),
    models: str | None = MODELS_OPTION,
    allow_pickle: list[str] | None = ALLOW_PICKLE_OPTION,
    data: Path = typer.Option(
        Path("portrait3d-data"), "--data", help="local folder of the embedded job store and files"
    ),
    store: str | None = typer.Option(
        None,
        "--store",
        help="job store URL, e.g. postgresql+psycopg://u:p@host/db (default: SQLite in the data folder)",
    ),
    storage_uri: str | None = typer.Option(
        None, "--storage", help="where uploads and results live: a folder or s3:// prefix (default: the data folder)"
    ),
    settings: list[str] | None = typer.Option(
        None, "--setting", "-c", help="stage.field=value default of the service's heads; repeatable"
    ),
    sets: list[str] | None = typer.Option(
        None,
        "--set",
        help="any other service setting, key=value (e.g. max_upload_mb=8); `portrait3d info` lists them; repeatable",
    ),
    pool: list[str] | None = typer.Option(
        None, "--pool", help="a stage deployment's pool setting, e.g. geometry.max_size=2; repeatable"
    ),
    serve_config: Path | None = typer.Option(
        None,
        "--config",
        help="a Ray Serve config file to deploy instead "
        "(the one a RayService holds); the other service options are its",
    ),
    address: str | None = typer.Option(None, "--address", help="Ray cluster to join (default: a local instance)"),
    verbose: bool = VERBOSE_OPTION,
) -> None:
    """The HTTP service: upload a photo, get a job id, watch it, download the head (Ctrl-C or SIGTERM
    stops it)."""
    import logging
    import time
    import urllib.request

    _stop_on_signals()
    if not verbose:
        for name in ("ray", "ray.serve", "ray.data"):
            logging.getLogger(name).setLevel(logging.WARNING)

    with _quiet(verbose):
        try:
            if serve_config is not None:
                from .serve_app.app import start_config
                from .serve_app.config_file import read_serve_config

                config = read_serve_config(serve_config)
                start_config(config, address)
                url = f"http://{config.http_options.host}:{config.http_options.port}"
            else:
                from .pipelines.overrides import parse_overrides
                from .serve_app.app import start_local
                from .serve_app.settings import serve_settings

                args: dict = {"profile": profile, "data": str(data), "settings": list(settings or [])}
                args.update({k: v for k, v in (("models", models), ("store", store), ("storage", storage_uri)) if v})
                if allow_pickle:
                    args["allow_pickle"] = list(allow_pickle)
                for item in sets or []:
                    key, eq, value = item.partition("=")
                    if not eq:
                        raise _config_error(f"--set takes key=value, not {item!r}")
                    args[key.strip()] = value.strip()
                args["pools"] = parse_overrides(pool)
                serve_settings(args)
                url = start_local(args, host, port, address)
            err.print(f"portrait3d service at [bold]{url}[/] (API docs: {url}/docs); loading the stages' models...")
            for _ in range(600):
                try:
                    with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:  # noqa: S310 (our own service)
                        if r.status == 200:
                            break
                except OSError:
                    pass
                time.sleep(1)
            err.print("[green]ready[/]; Ctrl-C stops it")
            while True:
                time.sleep(3600)
        except Portrait3DError as e:
            _fail(e)
        except KeyboardInterrupt:
            from ray import serve as ray_serve

            ray_serve.shutdown()
            err.print("stopped")


def _stop_on_signals() -> None:
    """SIGINT and SIGTERM (what Kubernetes and systemd send) end the process through KeyboardInterrupt,
    so that it shuts Serve down; also when it was started with SIGINT ignored (a shell's background job)."""
    import signal

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)


def _config_error(message: str) -> Portrait3DError:
    from .errors import ConfigError

    return ConfigError(message)


models_app = typer.Typer(
    no_args_is_help=True, help="Model roots of the paper profile: pull, check, index, build a tiny one."
)
app.add_typer(models_app, name="models")


@models_app.command("check")
def models_check(
    root: str = typer.Argument(..., help="model root: a local folder or s3:// prefix with manifest.json"),
    fast: bool = typer.Option(False, "--fast", help="check sizes only, not SHA-256 (weights are gigabytes)"),
) -> None:
    """List every role of ROOT: present, missing or corrupt (exit 1 unless every required role is present)."""
    from .pipelines.models import ROLES, check_root

    try:
        states = check_root(root, hashes=not fast)
    except Portrait3DError as e:
        _fail(e)
    table = Table("role", "state", "size", "licence", "source / problems")
    colour = {"present": "green", "absent": "dim", "missing": "red", "corrupt": "red"}
    for st in states:
        detail = "; ".join(st.problems) or st.source or ROLES[st.role].help
        table.add_row(
            st.role,
            f"[{colour[st.state]}]{st.state}[/]",
            f"{st.bytes / 2**20:.1f} MiB" if st.bytes else "",
            st.licence,
            detail,
        )
    out.print(table)
    bad = [st.role for st in states if st.state in ("missing", "corrupt")]
    if bad:
        err.print(f"[bold red]not usable[/]: {', '.join(bad)}")
        raise typer.Exit(1)


@models_app.command("pull")
def models_pull(
    root: Path = typer.Argument(..., help="local folder for the model root (created if absent)"),
    roles: str = typer.Option(
        "", "--roles", help="comma-separated roles (default: every required role and face_parsing)"
    ),
    accept_licences: bool = typer.Option(
        False, "--accept-licences", help="accept every listed licence without asking (needed when not interactive)"
    ),
    sources: Path = typer.Option(
        None, "--sources", help="JSON {role: {repo_id, revision, subfolder, sha256}}: a mirror, fork or revision"
    ),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Hugging Face cache (default: HF_HUB_CACHE)"),
) -> None:
    """Fetch each role's files from its Hugging Face repository at a pinned revision (resumable; offline
    from the cache with HF_HUB_OFFLINE=1) after showing its licence, then write ROOT/manifest.json."""
    import json

    from .pipelines.models.pull import SOURCES, licences, pull_plan, pull_root, sources_with

    try:
        table = SOURCES
        if sources is not None:
            try:
                table = sources_with(json.loads(sources.read_text()))
            except (OSError, ValueError) as e:
                raise _config_error(f"--sources {sources}: {e}") from None
        plan = pull_plan([r.strip() for r in roles.split(",") if r.strip()] or None, table)
    except Portrait3DError as e:
        _fail(e)
    lic = Table("role", "licence", "read it at", title="licences of the models to pull")
    for row in licences(plan):
        lic.add_row(*row)
    out.print(lic)
    if not accept_licences:
        if not sys.stdin.isatty():
            _fail(_config_error("accept the licences above with --accept-licences (not interactive)"))
        if not typer.confirm("Do you accept these licences?", default=False):
            _fail(_config_error("licences not accepted; nothing was fetched"))
    try:
        manifest = pull_root(root, plan, cache_dir, progress=lambda m: err.print(f"pulling {m}"))
    except Portrait3DError as e:
        _fail(e)
    _print_result(f"{root / 'manifest.json'}: {', '.join(manifest['roles'])}")


@models_app.command("index")
def models_index(root: Path = typer.Argument(..., help="local model root holding one folder per role")) -> None:
    """Write ROOT/manifest.json from the role folders present (hashes every file)."""
    from .pipelines.models import index_root

    try:
        manifest = index_root(root)
    except Portrait3DError as e:
        _fail(e)
    _print_result(f"{root / 'manifest.json'}: {', '.join(manifest['roles'])}")


@models_app.command("tiny")
def models_tiny(root: Path = typer.Argument(..., help="empty folder for the tiny root")) -> None:
    """Build a root of tiny random models of the real classes (for smoke tests; needs the test extra)."""
    from .pipelines.models.tiny import build_tiny_root

    _print_result(build_tiny_root(root))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
