"""Builds: COPY/ADD/ENV/WORKDIR/USER/... into images with Docker's history, the cache (hits, a changed
source rebuilding from its step on, --no-cache), SOURCE_DATE_EPOCH, multi-stage builds, ONBUILD, pulls of a
missing base image, errors that leave nothing behind, and RUN through the OCI runtime (as root)."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import tarfile
from datetime import datetime, timezone
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ovlcore
from ovlcore.errors import BuildError
from support.build import busybox_image, counts, needs_runtime, write_context
from support.cli import run_cli
from support.loopback import LoopbackServer
from support.registry import Registry
from support.stores import open_store

RUN = needs_runtime()


@pytest.fixture
def base(store: ovlcore.Store) -> ovlcore.Image:
    return busybox_image(store)


def build(store: ovlcore.Store, ctx: Path, **kw: object) -> tuple[ovlcore.Image, list[str]]:
    lines: list[str] = []
    img = store.images.build(ctx, progress=lines.append, **kw)  # type: ignore[arg-type]
    return img, lines


DOCKERFILE = """\
FROM busybox:test
ARG VERSION=1.0
ENV APP_HOME=/srv/app \\
    GREETING="hello world"
LABEL org.example.version=$VERSION maintainer="me"
WORKDIR $APP_HOME
COPY files/ ./data/
COPY --chown=app:staff one.txt two.txt ./
ADD archive.tar.gz /opt/
USER app
EXPOSE 8080 53/udp
VOLUME ["/srv/app/state"]
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --retries=3 CMD ["cat", "/srv/app/one.txt"]
SHELL ["/bin/sh", "-ec"]
ENTRYPOINT ["/bin/sh"]
CMD ["-c", "cat one.txt"]
"""


def archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        ti = tarfile.TarInfo("pkg/readme")
        ti.size, ti.mode, ti.uid = 3, 0o640, 7
        tf.addfile(ti, io.BytesIO(b"hi\n"))
    return gzip.compress(buf.getvalue(), mtime=0)


def context(tmp_path: Path, dockerfile: str = DOCKERFILE, **extra: str | bytes | int) -> Path:
    files: dict[str, str | bytes | int] = {
        "Dockerfile": dockerfile, "files/a.txt": "a\n", "files/sub/b.txt": "b\n", "one.txt": "1\n", "two.txt": "2\n",
        "archive.tar.gz": archive(), "files/skip.log": "ignored\n", ".dockerignore": "**/*.log\n",
    }
    files.update({k.replace("__", "/"): v for k, v in extra.items()})
    return write_context(tmp_path / "ctx", files)


def test_build_config_files_and_history(store: ovlcore.Store, base: ovlcore.Image, tmp_path: Path) -> None:
    ctx = context(tmp_path)
    img, lines = build(store, ctx, tag="app:1", build_args={"VERSION": "2.0", "UNUSED": "x"})
    assert img.tags == ["app:1"]
    assert lines[-3:] == ["[Warning] One or more build-args [UNUSED] were not consumed\n",
                          f"Successfully built {img.short_id}\n", "Successfully tagged app:1\n"]
    cfg = img.config["config"]
    assert cfg["Env"] == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "APP_HOME=/srv/app", "GREETING=hello world"]
    assert cfg["Labels"] == {"org.example.version": "2.0", "maintainer": "me"}
    assert cfg["WorkingDir"] == "/srv/app" and cfg["User"] == "app"
    assert cfg["ExposedPorts"] == {"8080/tcp": {}, "53/udp": {}}
    assert cfg["Volumes"] == {"/srv/app/state": {}}
    assert cfg["StopSignal"] == "SIGTERM"
    assert cfg["Healthcheck"] == {"Test": ["CMD", "cat", "/srv/app/one.txt"], "Interval": 30_000_000_000, "Retries": 3}
    assert cfg["Shell"] == ["/bin/sh", "-ec"]
    assert cfg["Entrypoint"] == ["/bin/sh"] and cfg["Cmd"] == ["-c", "cat one.txt"]
    # One history entry per instruction after FROM; layers only for the steps that changed files.
    history = img.config["history"]
    assert len(history) == 1 + 15
    layered = [not h.get("empty_layer", False) for h in history[1:]]
    assert layered == [False, False, False, True, True, True, True] + [False] * 8
    assert len(img.diff_ids) == 1 + 4
    fs = store.containers.create(img).fs
    assert fs.read_text("/srv/app/data/a.txt") == "a\n" and fs.read_text("/srv/app/data/sub/b.txt") == "b\n"
    assert not fs.exists("/srv/app/data/skip.log")  # .dockerignore
    st = fs.stat("/srv/app/one.txt")
    assert (st.st_uid, st.st_gid) == (1000, 50)
    assert fs.stat("/srv/app/data/a.txt").st_uid == 0
    assert fs.read_text("/opt/pkg/readme") == "hi\n"  # ADD extracted the local archive
    assert fs.stat("/opt/pkg/readme").st_mode & 0o777 == 0o640
    entries = img.history()
    assert entries[0].id == img.id and all(e.id != "<missing>" for e in entries[:-1])
    assert "ENV APP_HOME=/srv/app GREETING=hello world" in entries[-3].created_by


def test_rebuild_is_all_cache_and_changes_rebuild_from_their_step(store: ovlcore.Store, base: ovlcore.Image, tmp_path: Path) -> None:
    ctx = context(tmp_path)
    first, _ = build(store, ctx, tag="app:1")
    again, lines = build(store, ctx, tag="app:1")
    assert again.id == first.id
    assert sum(line.startswith(" ---> Using cache") for line in lines) == 15
    # Times of the sources do not matter.
    os.utime(ctx / "one.txt", (1, 1))
    os.utime(ctx / "files" / "a.txt", (2, 2))
    assert build(store, ctx)[0].id == first.id
    # A changed source rebuilds from its step on; steps before it are cache hits.
    (ctx / "one.txt").write_text("changed\n")
    changed, lines = build(store, ctx, tag="app:2")
    assert changed.id != first.id
    hits = [i for i, line in enumerate(lines) if line.startswith(" ---> Using cache")]
    step_lines = [line for line in lines if line.startswith("Step ")]
    assert len(hits) == 5 and step_lines[6].startswith("Step 7/16 : COPY --chown")
    assert lines.index(step_lines[6]) > hits[-1]
    assert store.containers.create(changed).fs.read_text("/srv/app/one.txt") == "changed\n"
    # --no-cache: nothing reused.
    _, lines = build(store, ctx, no_cache=True)
    assert not any(line.startswith(" ---> Using cache") for line in lines)


def test_source_date_epoch_gives_the_same_id(store: ovlcore.Store, base: ovlcore.Image, tmp_path: Path) -> None:
    ctx = context(tmp_path)
    a, _ = build(store, ctx, no_cache=True, source_date_epoch=1_700_000_000)
    b, _ = build(store, ctx, no_cache=True, source_date_epoch=1_700_000_000)
    assert a.id == b.id
    epoch = datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc)
    assert a.created == epoch
    assert {h.created for h in a.history()[:-1]} == {epoch}
    c, _ = build(store, ctx, no_cache=True)
    assert c.id != a.id


def test_scratch_multi_stage_target_and_copy_from(store: ovlcore.Store, base: ovlcore.Image, tmp_path: Path) -> None:
    df = """\
ARG BASE=busybox:test
FROM ${BASE} AS builder
COPY one.txt /out/one
COPY two.txt /out/two
FROM scratch AS final
COPY --from=builder /out/ /
COPY --from=0 /bin/busybox /bin/busybox
FROM final AS extra
LABEL extra=1
"""
    ctx = context(tmp_path, df)
    img, _ = build(store, ctx, target="final", tag="final:1")
    assert "extra" not in (img.config["config"].get("Labels") or {})
    fs = store.containers.create(img).fs
    assert sorted(fs.listdir("/")) == ["bin", "one", "two"]
    assert fs.read_text("/one") == "1\n"
    assert len(img.diff_ids) == 2 and len(img.config["history"]) == 2
    full, _ = build(store, ctx)
    assert full.config["config"]["Labels"] == {"extra": "1"}
    with pytest.raises(BuildError, match="failed to reach build target nope"):
        build(store, ctx, target="nope")


def test_onbuild_fires_in_a_child_build(store: ovlcore.Store, base: ovlcore.Image, tmp_path: Path) -> None:
    ctx = context(tmp_path, "FROM busybox:test\nONBUILD COPY one.txt /from-trigger\nONBUILD ENV TRIGGERED=yes\n")
    parent, _ = build(store, ctx, tag="parent:1")
    assert parent.config["config"]["OnBuild"] == ["COPY one.txt /from-trigger", "ENV TRIGGERED=yes"]
    (ctx / "Dockerfile").write_text("FROM parent:1\nLABEL child=1\n")
    child, lines = build(store, ctx)
    assert "# Executing 2 build triggers\n" in lines
    assert not child.config["config"].get("OnBuild")
    assert "TRIGGERED=yes" in child.config["config"]["Env"]
    assert store.containers.create(child).fs.read_text("/from-trigger") == "1\n"


def test_labels_option_and_heredoc_copy(store: ovlcore.Store, base: ovlcore.Image, tmp_path: Path) -> None:
    ctx = context(tmp_path, "FROM busybox:test\nARG WHO=you\nCOPY <<EOF /etc/motd\nhi $WHO\nEOF\n")
    img, _ = build(store, ctx, labels={"a": "1"})
    assert img.config["config"]["Labels"] == {"a": "1"}
    assert len(img.config["history"]) == 1 + 3
    assert store.containers.create(img).fs.read_text("/etc/motd") == "hi you\n"


@pytest.mark.parametrize(
    "dockerfile, line, message",
    [
        ("FROM busybox:test\nCOPY missing.txt /\n", 2, "file not found in build context"),
        ("FROM busybox:test\nCOPY ../outside /\n", 2, "outside the build context"),
        ("FROM busybox:test\nCOPY escape /\n", 2, "outside the build context"),
        ("FROM busybox:test\nENV A=1\nCOPY one.txt two.txt /dir\n", 3, "must be a directory and end with a /"),
        ("FROM busybox:test\nCOPY files/skip.log /\n", 2, "excluded by .dockerignore"),
        ("FROM busybox:test\nENV A=1\nBOGUS x\n", 3, "unknown instruction: BOGUS"),
        ("FROM busybox:test\nCOPY --from=nostage one.txt /\n", 2, "no such stage or image"),
        ("FROM busybox:test\nCOPY one.txt /\nCOPY --chown=ghost one.txt /x\n", 3, "unable to find user ghost"),
        ("FROM busybox:test\nENV A=${B:?required}\n", 2, "B: required"),
    ],
)
def test_errors_name_the_line_and_leave_nothing(
    store: ovlcore.Store, base: ovlcore.Image, tmp_path: Path, dockerfile: str, line: int, message: str
) -> None:
    ctx = context(tmp_path, dockerfile)
    os.symlink("/etc/passwd", ctx / "escape")
    before = counts(store)
    with pytest.raises(BuildError, match=message) as e:
        build(store, ctx, tag="bad:1")
    assert e.value.line == line and e.value.dockerfile == str(ctx / "Dockerfile")
    assert counts(store) == before
    with pytest.raises(ovlcore.ImageNotFound):
        store.images.get("bad:1")


def test_a_failed_build_keeps_earlier_cache(store: ovlcore.Store, base: ovlcore.Image, tmp_path: Path) -> None:
    ctx = context(tmp_path, "FROM busybox:test\nCOPY one.txt /\n")
    good, _ = build(store, ctx)
    before = counts(store)
    (ctx / "Dockerfile").write_text("FROM busybox:test\nCOPY one.txt /\nCOPY nothing /\n")
    with pytest.raises(BuildError):
        build(store, ctx)
    assert counts(store) == before and store.images.find(good.id) is not None


def test_prune_removes_the_intermediate_chain(store: ovlcore.Store, base: ovlcore.Image, tmp_path: Path) -> None:
    ctx = context(tmp_path, "FROM busybox:test\nENV A=1\nCOPY one.txt /\nCMD [\"sh\"]\n")
    before = counts(store)
    img, _ = build(store, ctx, tag="app:1")
    assert counts(store)[0] == before[0] + 3
    assert store.images.prune().deleted == []  # intermediate images are parents, not dangling
    store.images.remove("app:1")
    store.images.prune()
    assert counts(store) == before


def test_dockerfile_path_is_relative_to_the_context(store: ovlcore.Store, base: ovlcore.Image, tmp_path: Path) -> None:
    ctx = context(tmp_path, "FROM scratch\n", **{"docker/alt.Dockerfile": "FROM busybox:test\nLABEL alt=1\n"})
    img, _ = build(store, ctx, dockerfile="docker/alt.Dockerfile")
    assert img.config["config"]["Labels"] == {"alt": "1"}
    with pytest.raises(BuildError, match="Cannot locate specified Dockerfile"):
        build(store, ctx, dockerfile="nope")


def test_cli_build(store: ovlcore.Store, base: ovlcore.Image, tmp_path: Path) -> None:
    ctx = context(tmp_path, "FROM busybox:test\nARG X\nLABEL x=$X\n")
    other = tmp_path / "elsewhere.Dockerfile"
    other.write_text("FROM busybox:test\nARG X\nLABEL from=elsewhere x=$X\n")
    store.close()
    r = run_cli("build", "-t", "cli:1", "--build-arg", "X=7", "--label", "l=v", "-f", str(other), str(ctx), root=store.root)
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    assert "Step 1/4 : FROM busybox:test" in out and "Successfully tagged cli:1" in out
    s = open_store(store.root)
    assert s.images.get("cli:1").config["config"]["Labels"] == {"from": "elsewhere", "x": "7", "l": "v"}
    r = run_cli("build", "-f", str(ctx / "missing"), str(ctx), root=store.root)
    assert r.returncode == 1 and b"Cannot locate specified Dockerfile" in r.stderr


def test_cli_build_target_cache_progress_network_and_platform(store: ovlcore.Store, base: ovlcore.Image, tmp_path: Path) -> None:
    ctx = context(tmp_path, "FROM busybox:test AS first\nCOPY one.txt /\nFROM first\nLABEL second=1\n")
    host = f"linux/{base.config['architecture']}"
    store.close()
    common = ["--target", "first", "--network", "none", "--platform", host, str(ctx)]
    r = run_cli("build", "-t", "t:1", "--progress=plain", *common, root=store.root)
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    # The target stage only; its base serves the platform asked for, so nothing is pulled.
    assert "Step 2/2 : COPY one.txt /" in out and "LABEL" not in out and "Pulling" not in out
    again = run_cli("build", "-t", "t:1", *common, root=store.root).stdout.decode()
    assert again.count(" ---> Using cache") == 1
    fresh = run_cli("build", "--no-cache", "-t", "t:2", *common, root=store.root).stdout.decode()
    assert "Using cache" not in fresh and " ---> Running in " in fresh
    quiet = run_cli("build", "-q", *common, root=store.root)
    image_id = quiet.stdout.decode().strip()
    assert quiet.returncode == 0 and image_id.startswith("sha256:") and "Step" not in quiet.stdout.decode()
    s = open_store(store.root)
    # A cache hit on one of the two equal builds.
    assert image_id in (s.images.get("t:1").id, s.images.get("t:2").id)
    assert "second" not in (s.images.get("t:2").config["config"].get("Labels") or {})


@pytest.mark.registry
def test_from_a_missing_image_pulls_it(registry: Registry, tmp_path: Path) -> None:
    cfg = ovlcore.RegistryConfig()
    src = open_store(tmp_path / "src", registry=cfg)
    base = busybox_image(src)
    ref = registry.ref("lib/busybox:1")
    src.images.push(base, ref)
    dst = open_store(tmp_path / "dst", registry=cfg)
    ctx = context(tmp_path, f"FROM {ref}\nCOPY one.txt /\n")
    img, lines = build(dst, ctx)
    assert any(line.startswith("Pulling ") for line in lines)
    assert img.diff_ids[0] == base.diff_ids[0]
    assert dst.images.get(ref).id == base.id


@pytest.mark.registry
def test_a_local_image_of_another_platform_is_pulled_for_the_one_asked_for_or_refused(registry: Registry, tmp_path: Path) -> None:
    cfg = ovlcore.RegistryConfig()
    src = open_store(tmp_path / "src", registry=cfg)
    pushed = busybox_image(src)
    host = f"linux/{pushed.config['architecture']}"
    ref = registry.ref("lib/busybox:plat")
    src.images.push(pushed, ref)
    dst = open_store(tmp_path / "dst", registry=cfg)
    local = busybox_image(dst)
    arm = dst.images.create_config({**local.config, "architecture": "arm64", "variant": "v8"})
    unpushed = registry.ref("lib/never-pushed:1")
    for tag in (ref, unpushed):
        dst.images.tag(arm, tag)

    # The local image serves the platform asked for: used, no pull.
    img, lines = build(dst, context(tmp_path, f"FROM --platform=linux/arm64 {ref}\nCOPY one.txt /\n"))
    assert not any(line.startswith("Pulling ") for line in lines)
    assert img.config["architecture"] == "arm64" and img.diff_ids[0] == arm.diff_ids[0]

    # It does not, and the reference can be pulled: the one for the platform is pulled (and tagged).
    img, lines = build(dst, context(tmp_path, f"FROM --platform={host} {ref}\nCOPY one.txt /\n"))
    assert f"Pulling {ref}\n" in lines and dst.images.get(ref).id == pushed.id
    assert img.config["architecture"] == pushed.config["architecture"]

    # The same through build(platform=), for COPY --from=<image> as well.
    dst.images.tag(arm, ref)
    img, lines = build(dst, context(tmp_path, f"FROM busybox:test\nCOPY --from={ref} /bin/busybox /bb\n"), platform=host)
    assert f"Pulling {ref}\n" in lines and dst.images.get(ref).id == pushed.id

    # It does not, and nothing can be pulled: an error naming the line and both platforms, nothing left.
    before = counts(dst)
    with pytest.raises(BuildError) as e:
        build(dst, context(tmp_path, f"FROM busybox:test\nENV A=1\nFROM --platform={host} {unpushed}\nCOPY one.txt /\n"))
    msg = str(e.value)
    assert e.value.line == 3 and "does not match the specified platform" in msg
    assert f"wanted {host}" in msg and "actual: linux/arm64/v8" in msg, msg
    assert counts(dst) == before and dst.images.get(unpushed).id == arm.id
    with pytest.raises(BuildError, match="invalid platform") as e:
        build(dst, context(tmp_path, f"FROM --platform=linux {unpushed}\n"))
    assert e.value.line == 1


# ----- RUN -----


@RUN
def test_run_steps(store: ovlcore.Store, base: ovlcore.Image, tmp_path: Path) -> None:
    df = """\
FROM busybox:test
ARG FLAVOUR=plain
ENV GREETING=hi
WORKDIR /work
RUN echo "$GREETING $FLAVOUR" > out.txt && id -u > uid && pwd > cwd && hostname > host && ls /proc/self > /dev/null
RUN ["/bin/sh", "-c", "rm /etc/group && mkdir -p /var/new && ln -s out.txt /work/link"]
RUN true
ARG SHADOW=arg
ENV SHADOW=env
RUN echo $SHADOW > /shadow
RUN <<EOF
echo from heredoc > /tmp/heredoc
EOF
"""
    ctx = context(tmp_path, df)
    img, lines = build(store, ctx, build_args={"FLAVOUR": "spicy", "HTTP_PROXY": "http://proxy.invalid"})
    fs = store.containers.create(img).fs
    assert fs.read_text("/work/out.txt") == "hi spicy\n"
    assert fs.read_text("/work/uid") == "0\n" and fs.read_text("/work/cwd") == "/work\n"
    assert not fs.exists("/etc/group") and fs.is_dir("/var/new") and fs.readlink("/work/link") == "out.txt"
    st = fs.stat("/work/out.txt")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o644)
    assert fs.read_text("/tmp/heredoc") == "from heredoc\n"
    assert fs.read_text("/shadow") == "env\n"  # an ENV shadows the ARG of the same name
    history = img.config["history"]
    runs = [h for h in history if "echo" in h["created_by"] or h["created_by"].endswith(" true")]
    assert runs[0]["created_by"].startswith("|1 FLAVOUR=spicy /bin/sh -c echo")  # proxies are left out
    assert "proxy.invalid" not in json.dumps(history)
    # `RUN true` changed nothing: an empty layer, as Docker's builder makes.
    true_step = [h for h in history if h["created_by"].endswith("/bin/sh -c true")]
    assert true_step and true_step[0].get("empty_layer") is True
    # The mount points the runtime needed never show as changes.
    layer_dirs = [layer.path for layer in img.layers[1:]]
    assert not any((p / "proc").exists() or (p / "sys").exists() for p in layer_dirs)
    again, lines = build(store, ctx, build_args={"FLAVOUR": "spicy", "HTTP_PROXY": "http://proxy.invalid"})
    assert again.id == img.id and sum(line.startswith(" ---> Using cache") for line in lines) == 10


@RUN
def test_run_sees_root_owned_files_as_root(store: ovlcore.Store, base: ovlcore.Image, tmp_path: Path) -> None:
    """Also rootless, where the runtime's user namespace maps only the caller (to root)."""
    df = "FROM busybox:test\nRUN stat -c %u:%g /etc/passwd / > /owners && touch /f && chown 0:0 /f && stat -c %u:%g /f >> /owners\n"
    img, _ = build(store, context(tmp_path, df))
    fs = store.containers.create(img).fs
    assert fs.read_text("/owners") == "0:0\n0:0\n0:0\n"
    assert (fs.stat("/f").st_uid, fs.stat("/f").st_gid, fs.stat("/owners").st_uid) == (0, 0, 0)


@RUN
def test_run_as_the_image_user(store: ovlcore.Store, base: ovlcore.Image, tmp_path: Path) -> None:
    ctx = context(tmp_path, "FROM busybox:test\nUSER app:staff\nRUN id -u > /tmp/uid; id -g >> /tmp/uid; echo $HOME >> /tmp/uid\n")
    if os.geteuid() != 0:
        # Rootless, the user namespace maps the caller alone (to root): another user cannot exist there.
        with pytest.raises(BuildError, match="rootless builds map only the caller"):
            build(store, ctx)
        return
    img, _ = build(store, ctx)
    fs = store.containers.create(img).fs
    assert fs.read_text("/tmp/uid") == "1000\n50\n/home/app\n"
    assert fs.stat("/tmp/uid").st_uid == 1000


@RUN
def test_run_failure_has_exit_code_and_output_and_leaves_nothing(store: ovlcore.Store, base: ovlcore.Image, tmp_path: Path) -> None:
    ctx = context(tmp_path, "FROM busybox:test\nCOPY one.txt /\nRUN echo about to fail; echo on stderr >&2; exit 7\n")
    before = counts(store)
    with pytest.raises(BuildError) as e:
        build(store, ctx, tag="bad:1")
    assert e.value.exit_code == 7 and e.value.line == 3
    assert "about to fail" in e.value.output and "on stderr" in e.value.output
    assert "returned a non-zero code: 7" in str(e.value)
    assert counts(store) == before


@RUN
def test_run_has_no_network_unless_host(store: ovlcore.Store, base: ovlcore.Image, tmp_path: Path) -> None:
    ctx = context(tmp_path, "FROM busybox:test\nRUN ip -o link > /links\n")
    img, _ = build(store, ctx)
    links = store.containers.create(img).fs.read_text("/links")
    assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]
    img, _ = build(store, ctx, network="host", no_cache=True)
    assert len(store.containers.create(img).fs.read_text("/links").splitlines()) >= 1


@RUN
def test_run_with_source_date_epoch_is_reproducible(store: ovlcore.Store, base: ovlcore.Image, tmp_path: Path) -> None:
    ctx = context(tmp_path, "FROM busybox:test\nRUN mkdir /made && echo x > /made/file && rm /etc/passwd\nCOPY one.txt /made/\n")
    a, _ = build(store, ctx, no_cache=True, source_date_epoch=1_000_000_000)
    b, _ = build(store, ctx, no_cache=True, source_date_epoch=1_000_000_000)
    assert a.diff_ids == b.diff_ids and a.id == b.id


def test_unknown_runtime_is_named(store: ovlcore.Store, base: ovlcore.Image, tmp_path: Path) -> None:
    ctx = context(tmp_path, "FROM busybox:test\nRUN true\n")
    before = counts(store)
    with pytest.raises(BuildError, match="no-such-runtime: not found on PATH"):
        build(store, ctx, runtime="no-such-runtime")
    assert counts(store) == before


class Files:
    """A loopback web server's content: path -> (body, headers); a redirect for /moved."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, dict[str, str]]] = {}

    def handle(self, h: Any) -> None:
        if h.path == "/moved":
            h.reply(302, headers={"Location": "/pkg.tar.gz"})
        elif h.path in self.files:
            body, headers = self.files[h.path]
            h.reply(200, body, headers)
        else:
            h.reply(404, b"not found\n")


@pytest.fixture
def web() -> Iterator[tuple[LoopbackServer, Files]]:
    files = Files()
    server = LoopbackServer(files).start()
    try:
        yield server, files
    finally:
        server.stop()


def test_add_url(store: ovlcore.Store, base: ovlcore.Image, tmp_path: Path, web: tuple[LoopbackServer, Files]) -> None:
    server, files = web
    files.files["/data.txt"] = (b"remote\n", {"Last-Modified": "Wed, 21 Oct 2015 07:28:00 GMT"})
    files.files["/pkg.tar.gz"] = (archive(), {})
    ctx = context(tmp_path, f"FROM busybox:test\nADD {server.url}/data.txt /downloads/\nADD {server.url}/moved /pkg.tgz\n")
    img, lines = build(store, ctx)
    fs = store.containers.create(img).fs
    st = fs.stat("/downloads/data.txt")
    assert fs.read_bytes("/downloads/data.txt") == b"remote\n"
    assert (st.st_mode & 0o777, st.st_uid, int(st.st_mtime)) == (0o600, 0, 1445412480)
    assert fs.read_bytes("/pkg.tgz") == archive()  # a downloaded archive is not extracted
    # Cached while the content is the same; a changed download rebuilds its step.
    again, lines = build(store, ctx)
    assert again.id == img.id
    files.files["/data.txt"] = (b"changed\n", {})
    changed, _ = build(store, ctx)
    assert changed.id != img.id
    assert store.containers.create(changed).fs.read_bytes("/downloads/data.txt") == b"changed\n"
    before = counts(store)
    (ctx / "Dockerfile").write_text(f"FROM busybox:test\nENV A=1\nADD {server.url}/missing /x\n")
    with pytest.raises(BuildError, match="404") as e:
        build(store, ctx)
    assert e.value.line == 3 and counts(store) == before


def test_copy_chmod_from_an_image_and_whole_context(store: ovlcore.Store, base: ovlcore.Image, tmp_path: Path) -> None:
    df = """\
FROM busybox:test
COPY --chmod=0640 one.txt /m/one
COPY --chmod=750 files /m/files
COPY --from=busybox:test /etc/passwd /from-image/passwd
COPY . /whole/
"""
    ctx = context(tmp_path, df)
    img, _ = build(store, ctx)
    fs = store.containers.create(img).fs
    assert fs.stat("/m/one").st_mode & 0o7777 == 0o640
    assert fs.stat("/m/files/a.txt").st_mode & 0o7777 == 0o750 and fs.stat("/m/files/sub").st_mode & 0o7777 == 0o750
    assert fs.read_bytes("/from-image/passwd") == base.fs.read_bytes("/etc/passwd")
    whole = sorted(fs.listdir("/whole"))
    assert whole == [".dockerignore", "Dockerfile", "archive.tar.gz", "files", "one.txt", "two.txt"]
    assert sorted(fs.listdir("/whole/files")) == ["a.txt", "sub"]  # files/skip.log is ignored
    with pytest.raises(BuildError, match="invalid chmod"):
        (ctx / "Dockerfile").write_text("FROM busybox:test\nCOPY --chmod=rwx one.txt /\n")
        build(store, ctx)


def test_add_extracts_bzip2_and_xz_archives_and_copies_what_only_looks_like_one(
    store: ovlcore.Store, base: ovlcore.Image, tmp_path: Path
) -> None:
    plain = gzip.decompress(archive())
    df = """\
FROM busybox:test
ADD pkg.tar.bz2 /bz/
ADD pkg.tar.xz /xz
ADD fake.tar.bz2 notes.txt.gz /copied/
ADD --chown=app pkg.tar.xz /owned/
"""
    extra: dict[str, str | bytes | int] = {
        "pkg.tar.bz2": bz2.compress(plain),
        "pkg.tar.xz": lzma.compress(plain),
        # Not tars once decompressed: Docker copies them as they are.
        "fake.tar.bz2": b"BZh91AY&SY" + b"\0" * 600,
        "notes.txt.gz": gzip.compress(b"just text\n" * 100, mtime=0),
    }
    ctx = context(tmp_path, df, **extra)
    img, _ = build(store, ctx)
    fs = store.containers.create(img).fs
    for d in ("/bz", "/xz"):
        st = fs.lstat(f"{d}/pkg/readme")
        assert fs.read_bytes(f"{d}/pkg/readme") == b"hi\n" and st.st_mode & 0o7777 == 0o640 and st.st_uid == 7
    assert sorted(fs.listdir("/copied")) == ["fake.tar.bz2", "notes.txt.gz"]
    assert fs.read_bytes("/copied/fake.tar.bz2") == extra["fake.tar.bz2"]
    assert fs.read_bytes("/copied/notes.txt.gz") == extra["notes.txt.gz"]
    # As Docker: --chown does not apply to an extracted archive, nor to the directory made for it.
    assert fs.lstat("/owned").st_uid == 0 and fs.lstat("/owned/pkg/readme").st_uid == 7
    assert len(img.history()) == len(base.history()) + 4


def test_add_of_a_cut_off_archive_is_an_error_that_leaves_nothing(
    store: ovlcore.Store, base: ovlcore.Image, tmp_path: Path
) -> None:
    big = io.BytesIO()
    with tarfile.open(fileobj=big, mode="w") as tf:
        ti = tarfile.TarInfo("big")
        ti.size = 1 << 20
        tf.addfile(ti, io.BytesIO(os.urandom(ti.size)))
    xz = lzma.compress(big.getvalue())
    ctx = context(tmp_path, "FROM busybox:test\nENV A=1\nADD pkg.tar.xz /opt/\n", **{"pkg.tar.xz": xz[: len(xz) // 2]})
    before = counts(store)
    with pytest.raises(BuildError, match="ADD failed") as e:
        build(store, ctx)
    assert e.value.line == 3 and counts(store) == before


class Stop(Exception):
    pass


@RUN
def test_an_interrupted_run_step_leaves_no_process_and_nothing_in_the_store(
    store: ovlcore.Store, base: ovlcore.Image, tmp_path: Path
) -> None:
    ctx = context(tmp_path, "FROM busybox:test\nCOPY one.txt /\nRUN echo started; sleep 31.25; echo done\n")
    before = counts(store)

    def progress(line: str) -> None:
        if line == "started\n":
            raise Stop

    with pytest.raises(Stop):
        store.images.build(ctx, progress=progress)
    assert counts(store) == before
    sleeping = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if b"31.25" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    sleeping.append(pid)
            except OSError:
                pass
    assert sleeping == []
