"""The ``ovlcore`` command: Docker's storage verbs over an ovlcore store.

Output follows Docker's (same columns, human sizes, relative times); ``--json`` gives the same data for
scripts. Errors print one line on stderr and exit with status 1 (usage errors: 2).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import click

from . import __version__
from ._format import human_ago, human_size, table, truncate
from .errors import OvlError
from .mounts import Mount
from .references import parse_remote
from .store import Store

__all__ = ["main", "cli"]


class Ctx:
    def __init__(self, root: str | None, as_json: bool) -> None:
        self.root = root
        self.json = as_json
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.root)
        return self._store

    def emit(self, data: Any, text: Callable[[], str] | str) -> None:
        if self.json:
            click.echo(json.dumps(data, indent=2, default=str))
        else:
            out = text() if callable(text) else text
            if out:
                click.echo(out)


pass_ctx = click.make_pass_decorator(Ctx)


@contextlib.contextmanager
def progress(label: str, total: int | None = None) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr for long operations: only on a terminal, and only after a moment."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

    start = time.monotonic()
    bar: Progress | None = None
    task = None

    def update(done: int) -> None:
        nonlocal bar, task
        if bar is None:
            if time.monotonic() - start < 0.3:
                return
            bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            bar.start()
            task = bar.add_task(label, total=total)
        assert task is not None
        bar.update(task, completed=done)

    try:
        yield update
    finally:
        if bar is not None:
            bar.stop()


_PULL_STATES = {
    "waiting": "Waiting", "downloading": "Downloading", "verifying": "Verifying Checksum", "extracting": "Extracting",
    "exists": "Already exists", "done": "Pull complete",
}
_PUSH_STATES = {
    "waiting": "Preparing", "uploading": "Pushing", "exists": "Layer already exists", "mounted": "Mounted from another repository",
    "done": "Pushed",
}
_FINAL = ("exists", "done", "mounted")


class LayerLines:
    """``docker pull`` / ``docker push`` progress: one line per layer (``<short id>: Downloading [==>  ]
    1.2MB/5MB``), redrawn in place on a terminal (stderr); without one, a plain line when a layer is done."""

    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels
        self.rows: dict[str, tuple[str, int, int | None]] = {}
        self.tty = sys.stderr.isatty()
        self.live: Any = None

    def __enter__(self) -> LayerLines:
        if self.tty:
            from rich.console import Console
            from rich.live import Live

            self.live = Live(self.render(), console=Console(stderr=True), refresh_per_second=8, transient=False)
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.update(self.render())
            self.live.stop()

    @staticmethod
    def bar(done: int, total: int | None) -> str:
        if not total:
            return ""
        import shutil

        # Docker's 50 columns where they fit beside the id and the sizes.
        width = max(10, min(50, shutil.get_terminal_size().columns - 45))
        filled = min(width, done * width // total)
        arrow = ">" if filled < width else ""
        return "[" + "=" * max(filled - (1 if arrow else 0), 0) + arrow + " " * (width - filled) + "]"

    def line(self, digest: str, state: str, done: int, total: int | None) -> str:
        short = digest.removeprefix("sha256:")[:12]
        label = self.labels.get(state, state)
        if state in ("downloading", "uploading"):
            amount = f"{human_size(done)}/{human_size(total)}" if total else human_size(done)
            return f"{short}: {label} {self.bar(done, total)} {amount}".rstrip()
        return f"{short}: {label}"

    def render(self) -> Any:
        from rich.text import Text

        return Text("\n".join(self.line(d, *row) for d, row in self.rows.items()))

    def __call__(self, event: Any) -> None:
        prev = self.rows.get(event.digest)
        self.rows[event.digest] = (event.state, event.done_bytes, event.total_bytes)
        if self.live is not None:
            self.live.update(self.render())
        elif event.state in _FINAL and (prev is None or prev[0] != event.state):
            click.echo(self.line(event.digest, event.state, event.done_bytes, event.total_bytes))


def _after_dashes(args: tuple[str, ...]) -> tuple[str, ...]:
    """A command given after ``--`` (which click passes through once options stop being parsed)."""
    return args[1:] if args[:1] == ("--",) else args


def _labels(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for kv in pairs:
        key, _, value = kv.partition("=")
        out[key] = value
    return out


def fail(message: str) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


def describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        where = f": {e.filename}" if e.filename is not None else ""
        where2 = f" -> {e.filename2}" if getattr(e, "filename2", None) else ""
        return f"{e.strerror}{where}{where2}"
    text = str(e)
    if isinstance(e, KeyError) and text.startswith("'"):
        text = text.strip("'")
    return text


class OvlGroup(click.Group):
    """Turns ovlcore's exceptions into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (OvlError, OSError, ValueError, LookupError) as e:
            fail(describe(e))
        except KeyboardInterrupt:
            click.echo("Interrupted", err=True)
            sys.exit(130)


@click.group(cls=OvlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", envvar="OVLCORE_ROOT", type=click.Path(file_okay=False), help="Store directory (default: $OVLCORE_ROOT, else ~/.local/share/ovlcore).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.version_option(__version__, prog_name="ovlcore")
@click.pass_context
def cli(ctx: click.Context, root: str | None, as_json: bool) -> None:
    """Docker's data-storage model without a daemon: images, layers, containers, volumes."""
    ctx.obj = Ctx(root, as_json)


# ----- images -----


def _image_rows(store: Store, digests: bool = False) -> list[dict[str, Any]]:
    rows = []
    for img in store.images.list():
        tags = img.tags or ["<none>:<none>"]
        repo_digests = img.repo_digests if digests else []
        for t in tags:
            repo, _, tag = t.rpartition(":")
            row = {"Repository": repo, "Tag": tag, "ID": img.id, "Created": img.created.isoformat(), "Size": img.size, "_img": img}
            if digests:
                # As Docker: the digest this repository knows the image by.
                mine = [d.partition("@")[2] for d in repo_digests if d.partition("@")[0] == repo]
                row["Digest"] = mine[0] if mine else "<none>"
            rows.append(row)
        if digests and not img.tags:
            for d in repo_digests:
                name, _, digest = d.partition("@")
                rows.append({"Repository": name, "Tag": "<none>", "ID": img.id, "Created": img.created.isoformat(), "Size": img.size,
                             "Digest": digest, "_img": img})
            if repo_digests:
                rows = [r for r in rows if not (r["_img"] is img and r["Repository"] == "<none>")]
    return rows


@cli.command("images")
@click.option("-q", "--quiet", is_flag=True, help="Only show image IDs.")
@click.option("-a", "--all", "show_all", is_flag=True, help="Show all images (they always are: accepted for Docker users).")
@click.option("--no-trunc", is_flag=True, help="Don't truncate output.")
@click.option("--digests", is_flag=True, help="Show digests.")
@pass_ctx
def images_cmd(c: Ctx, quiet: bool, show_all: bool, no_trunc: bool, digests: bool) -> None:
    """List images."""
    rows = _image_rows(c.store, digests)  # every image is listed; -a is accepted as Docker users type it
    def ident(i: str) -> str:
        return i if no_trunc else i[7:19]

    if quiet:
        seen: list[str] = []
        for r in rows:
            if r["ID"] not in seen:
                seen.append(r["ID"])
        c.emit(seen, "\n".join(ident(i) for i in seen))
        return
    data = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    if digests:
        c.emit(
            data,
            lambda: table(
                ["REPOSITORY", "TAG", "DIGEST", "IMAGE ID", "CREATED", "SIZE"],
                [[r["Repository"], r["Tag"], r["Digest"], ident(r["ID"]), human_ago(r["_img"].created), human_size(r["Size"])] for r in rows],
            ),
        )
        return
    c.emit(
        data,
        lambda: table(
            ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"],
            [[r["Repository"], r["Tag"], ident(r["ID"]), human_ago(r["_img"].created), human_size(r["Size"])] for r in rows],
        ),
    )


# ----- registries -----


@cli.command("pull")
@click.argument("reference")
@click.option("--platform", default=None, help="os/arch[/variant] of a multi-platform image (default: this host's).")
@click.option("-q", "--quiet", is_flag=True, help="Only print the image's reference.")
@pass_ctx
def pull_cmd(c: Ctx, reference: str, platform: str | None, quiet: bool) -> None:
    """Pull an image from a registry."""
    remote = parse_remote(reference)
    if not quiet and not c.json:
        click.echo(f"{remote.tag or remote.digest}: Pulling from {remote.repository.removeprefix('library/') if remote.registry == 'docker.io' else remote.repository}")
    lines = LayerLines(_PULL_STATES)
    with contextlib.ExitStack() as stack:
        cb = None if quiet or c.json else stack.enter_context(lines)
        img = c.store.images.pull(reference, platform=platform, progress=cb)
    mine = [d for d in img.repo_digests if d.startswith(remote.name + "@")]
    digest = mine[0].partition("@")[2] if mine else None
    c.emit(
        {"Id": img.id, "RepoTags": img.tags, "RepoDigests": img.repo_digests},
        str(remote) if quiet else f"Digest: {digest}\nStatus: Downloaded image for {remote.local_tag or mine[0]}\n{remote}",
    )


@cli.command("push")
@click.argument("source")
@click.argument("dest", required=False)
@click.option("--format", "fmt", type=click.Choice(["docker", "oci"]), default="docker", show_default=True, help="Manifest format.")
@click.option("--compression", type=click.Choice(["gzip", "zstd"]), default="gzip", show_default=True, help="Layer compression.")
@click.option("-q", "--quiet", is_flag=True, help="Only print the manifest digest.")
@pass_ctx
def push_cmd(c: Ctx, source: str, dest: str | None, fmt: str, compression: str, quiet: bool) -> None:
    """Push an image to a registry (to DEST, default SOURCE's name)."""
    target = parse_remote(dest if dest is not None else source)
    if not quiet and not c.json:
        click.echo(f"The push refers to repository [{target.registry}/{target.repository}]")
    lines = LayerLines(_PUSH_STATES)
    with contextlib.ExitStack() as stack:
        cb = None if quiet or c.json else stack.enter_context(lines)
        digest = c.store.images.push(source, dest, format=fmt, compression=compression, progress=cb)
    c.emit({"Digest": digest, "Reference": str(target)}, digest if quiet else f"{target.tag or target.digest}: digest: {digest}")


@cli.command("login")
@click.argument("host", required=False, default="docker.io")
@click.option("-u", "--username", default=None)
@click.option("-p", "--password", default=None, help="Password (prefer --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@pass_ctx
def login_cmd(c: Ctx, host: str, username: str | None, password: str | None, password_stdin: bool) -> None:
    """Log in to a registry: check the credentials, then save them like docker login."""
    if password_stdin:
        if password is not None:
            raise click.UsageError("--password and --password-stdin are mutually exclusive")
        password = sys.stdin.read().rstrip("\r\n")
    if username is None:
        if not sys.stdin.isatty():
            raise click.UsageError("a username is needed (-u USER)")
        username = click.prompt("Username")
    if password is None:
        if not sys.stdin.isatty():
            raise click.UsageError("a password is needed (--password-stdin or -p)")
        password = click.prompt("Password", hide_input=True)
    path = c.store.login(host, username, password)
    c.emit({"Status": "Login Succeeded", "File": path}, f"Login Succeeded (credentials saved in {path})")


@cli.command("logout")
@click.argument("host", required=False, default="docker.io")
@pass_ctx
def logout_cmd(c: Ctx, host: str) -> None:
    """Log out from a registry (forget its saved credentials)."""
    removed = c.store.logout(host)
    c.emit({"Removed": removed}, f"Removing login credentials for {host}" if removed else f"Not logged in to {host}")


@cli.command("history")
@click.argument("image")
@click.option("--no-trunc", is_flag=True)
@click.option("-q", "--quiet", is_flag=True)
@pass_ctx
def history_cmd(c: Ctx, image: str, no_trunc: bool, quiet: bool) -> None:
    """Show the history of an image."""
    hist = c.store.images.get(image).history()
    def ident(i: str) -> str:
        return i if no_trunc or i == "<missing>" else i[7:19]

    if quiet:
        c.emit([h.id for h in hist], "\n".join(ident(h.id) for h in hist))
        return
    data = [
        {"ID": h.id, "Created": h.created.isoformat() if h.created else None, "CreatedBy": h.created_by, "Size": h.size, "Comment": h.comment, "Tags": h.tags}
        for h in hist
    ]
    c.emit(
        data,
        lambda: table(
            ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
            [
                [ident(h.id), human_ago(h.created), h.created_by if no_trunc else truncate(h.created_by, 45), human_size(h.size), h.comment]
                for h in hist
            ],
        ),
    )


@cli.command("import")
@click.argument("source")
@click.argument("reference", required=False)
@click.option("-m", "--message", help="Commit message for the imported image.")
@click.option("-c", "--change", "changes", multiple=True, help="Apply a Dockerfile instruction (ENV, CMD, ...).")
@pass_ctx
def import_cmd(c: Ctx, source: str, reference: str | None, message: str | None, changes: tuple[str, ...]) -> None:
    """Import a root file system archive (tar, tar.gz, tar.zst; '-' for stdin) as an image."""
    src: Any = sys.stdin.buffer if source == "-" else source
    total = None if source == "-" else os.path.getsize(source)
    with progress("Importing", total) as cb:
        img = c.store.images.import_archive(src, tag=reference, message=message, changes=list(changes) or None, progress=cb)
    c.emit({"ID": img.id}, img.id)


@cli.command("build")
@click.argument("context", type=click.Path(exists=True, file_okay=False))
@click.option("-t", "--tag", "tags", multiple=True, help="Name and optionally a tag in the 'name:tag' format.")
@click.option("-f", "--file", "dockerfile", default=None, help="Name of the Dockerfile (default: CONTEXT/Dockerfile).")
@click.option("--build-arg", "build_args", multiple=True, help="Set a build-time variable (KEY=VALUE, or KEY to take it from the environment).")
@click.option("--target", default=None, help="Set the target build stage to build.")
@click.option("--label", "labels", multiple=True, help="Set metadata for an image (KEY=VALUE).")
@click.option("--no-cache", is_flag=True, help="Do not use cache when building the image.")
@click.option("--pull", is_flag=True, help="Always attempt to pull a newer version of the base images.")
@click.option("--network", default="none", show_default=True, help="Networking mode for the RUN instructions (none or host).")
@click.option("--runtime", default=None, help="OCI runtime for RUN steps (runc, crun or a path; default: the first on PATH that works).")
@click.option("--platform", default=None, help="Platform of the base images (os/arch[/variant]): a local one of another platform is pulled for it.")
@click.option("--progress", "progress_mode", type=click.Choice(["auto", "plain", "quiet"]), default="auto", show_default=True,
              help="Type of progress output (plain: the steps as docker build prints them).")
@click.option("-q", "--quiet", is_flag=True, help="Suppress the build output and print image ID on success.")
@pass_ctx
def build_cmd(
    c: Ctx, context: str, tags: tuple[str, ...], dockerfile: str | None, build_args: tuple[str, ...], target: str | None,
    labels: tuple[str, ...], no_cache: bool, pull: bool, network: str, runtime: str | None, platform: str | None,
    progress_mode: str, quiet: bool,
) -> None:
    """Build an image from a Dockerfile (as `docker build` with the classic builder), daemonless."""
    args: dict[str, str] = {}
    for kv in build_args:
        key, eq, value = kv.partition("=")
        if eq:
            args[key] = value
        elif key in os.environ:
            args[key] = os.environ[key]
    quiet = quiet or progress_mode == "quiet" or c.json

    def show(line: str) -> None:
        click.echo(line, nl=False)

    img = c.store.images.build(
        context, dockerfile=os.path.abspath(dockerfile) if dockerfile else "Dockerfile", tag=list(tags) or None,
        build_args=args, target=target, labels=_labels(labels), no_cache=no_cache, pull=pull, network=network,
        runtime=runtime, platform=platform, progress=None if quiet else show,
    )
    if quiet:
        c.emit({"ID": img.id, "Tags": list(tags)}, img.id)


@cli.command("tag")
@click.argument("source")
@click.argument("target")
@pass_ctx
def tag_cmd(c: Ctx, source: str, target: str) -> None:
    """Create a tag TARGET that refers to SOURCE."""
    c.store.images.tag(source, target)


@cli.command("rmi")
@click.argument("images", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True)
@pass_ctx
def rmi_cmd(c: Ctx, images: tuple[str, ...], force: bool) -> None:
    """Remove images."""
    out: list[str] = []
    errors = []
    for ref in images:
        try:
            lines = c.store.images.remove(ref, force=force)
        except (OvlError, OSError) as e:
            errors.append(describe(e))
            continue
        out.extend(lines)
        if not c.json:
            for line in lines:
                click.echo(line)
    if c.json:
        click.echo(json.dumps(out, indent=2))
    if errors:
        fail("; ".join(errors))


@cli.command("save")
@click.argument("images", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to a file instead of stdout.")
@click.option("--format", "fmt", type=click.Choice(["docker", "oci"]), default="docker", show_default=True)
@pass_ctx
def save_cmd(c: Ctx, images: tuple[str, ...], output: str | None, fmt: str) -> None:
    """Save images to a tar archive (stdout by default)."""
    if output is None and sys.stdout.isatty():
        fail("refusing to write the archive to a terminal; use -o or redirect stdout")
    dest: Any = output if output is not None else sys.stdout.buffer
    with progress("Saving") as cb:
        c.store.images.save(list(images), dest, format=fmt, progress=cb)


@cli.command("load")
@click.option("-i", "--input", "source", default="-", help="Read from a tar archive file instead of stdin ('-').")
@click.option("-q", "--quiet", is_flag=True)
@pass_ctx
def load_cmd(c: Ctx, source: str, quiet: bool) -> None:
    """Load images from a tar archive (docker-archive or OCI layout)."""
    src: Any = sys.stdin.buffer if source == "-" else source
    total = None if source == "-" or os.path.isdir(source) else os.path.getsize(source)
    with progress("Loading", total) as cb:
        imgs = c.store.images.load(src, progress=cb)
    lines: list[str] = []
    for img in imgs:
        if img.tags:
            lines.extend(f"Loaded image: {t}" for t in img.tags)
        else:
            lines.append(f"Loaded image ID: {img.id}")
    c.emit([{"ID": i.id, "Tags": i.tags} for i in imgs], "" if quiet else "\n".join(lines))


# ----- containers -----


@cli.command("create", context_settings={"allow_interspersed_args": False})
@click.argument("image")
@click.argument("command", nargs=-1)
@click.option("--name", help="Assign a name to the container.")
@click.option("--mount", "mounts", multiple=True, help="type=volume|bind,src=...,dst=...[,readonly]")
@click.option("-v", "--volume", "volumes", multiple=True, help="NAME:/path, /host:/path[:ro], or /path.")
@click.option("-l", "--label", "labels", multiple=True, help="key=value")
@pass_ctx
def create_cmd(c: Ctx, image: str, command: tuple[str, ...], name: str | None, mounts: tuple[str, ...], volumes: tuple[str, ...], labels: tuple[str, ...]) -> None:
    """Create a container: a new writable layer over IMAGE's layers."""
    command = _after_dashes(command)
    ms = [Mount.parse(m) for m in mounts] + [Mount.parse_volume(v) for v in volumes]
    lbl = _labels(labels)
    ctr = c.store.containers.create(image, name=name, mounts=ms, labels=lbl, command=list(command) or None)
    c.emit({"ID": ctr.id, "Name": ctr.name}, ctr.id)


@cli.command("ps")
@click.option("-a", "--all", "show_all", is_flag=True, help="Show all containers (all are stopped: always all).")
@click.option("-s", "--size", is_flag=True, help="Display total file sizes.")
@click.option("-q", "--quiet", is_flag=True)
@click.option("--no-trunc", is_flag=True)
@pass_ctx
def ps_cmd(c: Ctx, show_all: bool, size: bool, quiet: bool, no_trunc: bool) -> None:
    """List containers."""
    ctrs = c.store.containers.list()
    def ident(i: str) -> str:
        return i if no_trunc else i[:12]

    if quiet:
        c.emit([x.id for x in ctrs], "\n".join(ident(x.id) for x in ctrs))
        return
    data = []
    rows = []
    for x in ctrs:
        img = c.store.images.find(x.image_id)
        image = (img.tags[0] if img and img.tags else x.image_id[7:19])
        status = "Mounted" if x.mounted_at is not None else "Created"
        d: dict[str, Any] = {"ID": x.id, "Image": image, "Command": " ".join(x.command), "Created": x.created.isoformat(), "Status": status, "Names": x.name}
        row = [ident(x.id), image, truncate(json.dumps(" ".join(x.command)), 22), human_ago(x.created), status, x.name]
        if size:
            sz = x.size()
            d["SizeRw"], d["SizeRootFs"] = sz.rw, sz.virtual
            row.append(f"{human_size(sz.rw)} (virtual {human_size(sz.virtual)})")
        data.append(d)
        rows.append(row)
    headers = ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"] + (["SIZE"] if size else [])
    c.emit(data, lambda: table(headers, rows))


@cli.command("diff")
@click.argument("container")
@pass_ctx
def diff_cmd(c: Ctx, container: str) -> None:
    """List the changes to files in a container's file system (A added, C changed, D deleted)."""
    changes = c.store.containers.get(container).diff()
    c.emit([{"Kind": ch.kind, "Path": ch.path} for ch in changes], "\n".join(str(ch) for ch in changes))


@cli.command("commit")
@click.argument("container")
@click.argument("reference", required=False)
@click.option("-m", "--message")
@click.option("-a", "--author")
@click.option("-c", "--change", "changes", multiple=True)
@pass_ctx
def commit_cmd(c: Ctx, container: str, reference: str | None, message: str | None, author: str | None, changes: tuple[str, ...]) -> None:
    """Create a new image from a container's changes."""
    ctr = c.store.containers.get(container)
    with progress("Committing", ctr.size().rw if sys.stderr.isatty() else None) as cb:
        img = ctr.commit(reference, message=message, author=author, changes=list(changes) or None, progress=cb)
    c.emit({"ID": img.id}, img.id)


@cli.command("export")
@click.argument("container")
@click.option("-o", "--output", type=click.Path(dir_okay=False))
@pass_ctx
def export_cmd(c: Ctx, container: str, output: str | None) -> None:
    """Export a container's file system as a tar archive (stdout by default)."""
    if output is None and sys.stdout.isatty():
        fail("refusing to write the archive to a terminal; use -o or redirect stdout")
    ctr = c.store.containers.get(container)
    with progress("Exporting", ctr.size().virtual if sys.stderr.isatty() else None) as cb:
        ctr.export(output if output is not None else sys.stdout.buffer, progress=cb)


@cli.command("rm")
@click.argument("containers", nargs=-1, required=True)
@click.option("-v", "--volumes", is_flag=True, help="Remove anonymous volumes associated with the container.")
@click.option("-f", "--force", is_flag=True)
@pass_ctx
def rm_cmd(c: Ctx, containers: tuple[str, ...], volumes: bool, force: bool) -> None:
    """Remove containers."""
    errors = []
    removed = []
    for ref in containers:
        try:
            c.store.containers.remove(ref, volumes=volumes, force=force)
            removed.append(ref)
            if not c.json:
                click.echo(ref)
        except (OvlError, OSError) as e:
            errors.append(describe(e))
    if c.json:
        click.echo(json.dumps(removed))
    if errors:
        fail("; ".join(errors))


@cli.command("cp")
@click.argument("src")
@click.argument("dst")
@click.option("-L", "--follow-link", is_flag=True, help="Always follow symbol link in SRC_PATH.")
@click.option("-a", "--archive", is_flag=True, help="Archive mode (copy all uid/gid information).")
@pass_ctx
def cp_cmd(c: Ctx, src: str, dst: str, follow_link: bool, archive: bool) -> None:
    """Copy files between a container and the host: CONTAINER:PATH on one side."""
    total = _cp_total(c.store, src) if sys.stderr.isatty() else None
    with progress("Copying", total) as cb:
        c.store.cp(src, dst, follow_symlinks=follow_link, archive=archive, progress=cb)


def _cp_total(store: Store, src: str) -> int | None:
    """Bytes a copy will move (for the progress bar), when cheaply known."""
    from .cp import split_spec

    ref, path = split_spec(src)
    try:
        if ref is None:
            if os.path.isfile(path):
                return os.path.getsize(path)
            total = sum(os.lstat(os.path.join(d, f)).st_size for d, _, files in os.walk(path) for f in files)
        else:
            fs = store.containers.get(ref).fs
            if fs.is_file(path):
                return fs.stat(path).st_size
            total = sum(fs.lstat(f"{d}/{f}").st_size for d, _, files in fs.walk(path) for f in files)
    except (OSError, OvlError):
        return None
    return total or None  # a glob, or nothing to measure: a bar without a total


def _mount_args(args: tuple[str, ...]) -> tuple[str | None, list[str]]:
    """``[PATH] [-- CMD...]``; without ``--`` a lone argument naming a directory path is PATH, anything
    else is a command (as before PATH existed)."""
    if "--" in args:
        i = args.index("--")
        before, after = args[:i], list(args[i + 1 :])
        if len(before) > 1:
            raise click.UsageError("at most one PATH before --")
        return (before[0] if before else None), after
    if len(args) == 1 and ("/" in args[0] or os.path.isdir(args[0])):
        return args[0], []
    return None, list(args)


@cli.command("mount", context_settings={"allow_interspersed_args": False})
@click.option("--driver", type=click.Choice(["auto", "kernel", "fuse"]), default="auto", show_default=True,
              help="kernel overlayfs (needs root) or FUSE; auto: kernel when privileged")
@click.argument("container")
@click.argument("args", nargs=-1)
@pass_ctx
def mount_cmd(c: Ctx, driver: str, container: str, args: tuple[str, ...]) -> None:
    """Mount a container's merged file system: CONTAINER [PATH] [-- CMD...]. With CMD, run it in the
    mount and unmount after; without, stay mounted (through FUSE) until `ovlcore umount PATH`."""
    import subprocess

    path, command = _mount_args(args)
    ctr = c.store.containers.get(container)
    if not command and driver != "kernel":
        where = ctr.mount_fuse(path)
        click.echo(str(where))
        return
    with ctr.mount(path, driver=driver) as where:
        click.echo(f"{ctr.name} mounted at {where}", err=True)
        cmd = command or [os.environ.get("SHELL", "/bin/sh")]
        rc = subprocess.call(cmd, cwd=where)
    sys.exit(rc)


@cli.command("umount")
@click.argument("path")
def umount_cmd(path: str) -> None:
    """Unmount what `ovlcore mount` left mounted at PATH (also a mount whose daemon died)."""
    from . import fusemount

    try:
        fusemount.unmount(path)
    except OSError:
        # A mount whose daemon is gone cannot be unmounted normally: detach it.
        fusemount.unmount(path, lazy=True)


# ----- volumes -----


@cli.group("volume")
def volume_grp() -> None:
    """Manage volumes."""


@volume_grp.command("create")
@click.argument("name", required=False)
@click.option("-l", "--label", "labels", multiple=True)
@pass_ctx
def volume_create(c: Ctx, name: str | None, labels: tuple[str, ...]) -> None:
    lbl = _labels(labels)
    v = c.store.volumes.create(name, labels=lbl)
    c.emit({"Name": v.name}, v.name)


def _volume_dict(v: Any) -> dict[str, Any]:
    return {"Name": v.name, "Driver": "local", "Mountpoint": str(v.mountpoint), "Labels": v.labels, "CreatedAt": v.created.isoformat(), "Anonymous": v.anonymous, "Scope": "local"}


@volume_grp.command("ls")
@click.option("-q", "--quiet", is_flag=True)
@pass_ctx
def volume_ls(c: Ctx, quiet: bool) -> None:
    vols = c.store.volumes.list()
    if quiet:
        c.emit([v.name for v in vols], "\n".join(v.name for v in vols))
        return
    c.emit([_volume_dict(v) for v in vols], lambda: table(["DRIVER", "VOLUME NAME"], [["local", v.name] for v in vols]))


@volume_grp.command("inspect")
@click.argument("names", nargs=-1, required=True)
@pass_ctx
def volume_inspect(c: Ctx, names: tuple[str, ...]) -> None:
    click.echo(json.dumps([_volume_dict(c.store.volumes.get(n)) for n in names], indent=4))


@volume_grp.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True)
@pass_ctx
def volume_rm(c: Ctx, names: tuple[str, ...], force: bool) -> None:
    for n in names:
        c.store.volumes.remove(n, force=force)
        if not c.json:
            click.echo(n)
    if c.json:
        click.echo(json.dumps(list(names)))


@volume_grp.command("prune")
@click.option("-a", "--all", "prune_all", is_flag=True, help="Remove all unused volumes, not just anonymous ones.")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation.")
@pass_ctx
def volume_prune(c: Ctx, prune_all: bool, force: bool) -> None:
    r = c.store.volumes.prune(all=prune_all)
    _print_prune(c, r, "Deleted Volumes:")


def _print_prune(c: Ctx, r: Any, title: str) -> None:
    def text() -> str:
        lines = [title, *r.deleted, ""] if r.deleted else []
        lines.append(f"Total reclaimed space: {human_size(r.space_reclaimed)}")
        return "\n".join(lines)

    c.emit({"Deleted": r.deleted, "SpaceReclaimed": r.space_reclaimed}, text)


# ----- system -----


@cli.group("system")
def system_grp() -> None:
    """Manage the store."""


@system_grp.command("df")
@pass_ctx
def system_df(c: Ctx) -> None:
    """Show disk usage."""
    rows = c.store.df()

    def pct(r: Any) -> str:
        return f"{human_size(r.reclaimable)} ({100 * r.reclaimable // r.size if r.size else 0}%)"

    c.emit(
        [{"Type": r.type, "TotalCount": r.total, "Active": r.active, "Size": r.size, "Reclaimable": r.reclaimable} for r in rows],
        lambda: table(["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"], [[r.type, str(r.total), str(r.active), human_size(r.size), pct(r)] for r in rows]),
    )


@system_grp.command("prune")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation.")
@pass_ctx
def system_prune(c: Ctx, force: bool) -> None:
    """Remove dangling images, unused anonymous volumes and unreferenced layers."""
    _print_prune(c, c.store.prune(), "Deleted:")


@cli.command("check")
@click.option("--repair", is_flag=True, help="Fix what can safely be fixed.")
@click.option("--verify-digests", is_flag=True, help="Also re-hash every layer (slow).")
@pass_ctx
def check_cmd(c: Ctx, repair: bool, verify_digests: bool) -> None:
    """Verify the store: metadata against content, references, leftovers."""
    kwargs: dict[str, Any] = {"repair": repair}
    if verify_digests:
        kwargs["verify_digests"] = True
    r = c.store.check(**kwargs)
    c.emit(
        {"Problems": r.problems, "Repaired": r.repaired, "OK": r.ok},
        lambda: "\n".join([*(f"problem: {p}" for p in r.problems), *(f"repaired: {p}" for p in r.repaired)]) or "store is consistent",
    )
    if r.problems and not r.ok:
        sys.exit(1)


@cli.command("demo")
@click.option("--keep", is_flag=True, help="Keep the images, containers and volumes the demo makes.")
@pass_ctx
def demo_cmd(c: Ctx, keep: bool) -> None:
    """Walk through Docker's storage model on the store: layers, containers, copy-up, commit, volumes, cp."""
    from .demo import run

    run(c.store, keep=keep)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="ovlcore")

