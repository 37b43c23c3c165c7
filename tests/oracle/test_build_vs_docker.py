"""ovlcore's builds against Docker's own classic builder (``DOCKER_BUILDKIT=0 docker build``): for each
Dockerfile of a corpus, built from the same context on the same busybox base (saved by ovlcore, loaded
into Docker), the two images have the same files (type, mode, owner, content, link targets), the same
runtime config fields, one history entry per instruction with the same ``empty_layer`` pattern, and the
same number of layers. Docker's image comes back through ``docker save`` and ``images.load``."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

import ovlcore
from support.build import busybox_image, needs_runtime, write_context
from support.docker import DockerObjects, run
from support.stores import open_store
from support.trees import compare_trees, fs_tree

pytestmark = [pytest.mark.docker, pytest.mark.slow]

FIELDS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "Labels", "ExposedPorts", "Volumes", "StopSignal", "Healthcheck", "Shell", "OnBuild")


def _archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data, mode, uid in (("pkg/readme", b"hi\n", 0o640, 7), ("pkg/bin/tool", b"#!/bin/sh\n", 0o755, 0)):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.uid, ti.gid, ti.mtime = len(data), mode, uid, uid, 1_500_000_000
            tf.addfile(ti, io.BytesIO(data))
        ti = tarfile.TarInfo("pkg/link")
        ti.type, ti.linkname = tarfile.SYMTYPE, "readme"
        tf.addfile(ti)
    return buf.getvalue()


FILES: dict[str, str | bytes | int] = {
    "one.txt": "1\n", "two.txt": "2\n", "tool.sh": "#!/bin/sh\necho tool\n",
    "files/a.txt": "a\n", "files/sub/b.txt": "b\n", "files/empty": 0o755, "files/secret": "s\n",
    "files/skip.log": "ignored\n", "files/sub/keep.log": "kept by an exception\n",
    "archive.tar.gz": gzip.compress(_archive(), mtime=0), ".dockerignore": "**/*.log\n!files/sub/keep.log\n",
    "archive.tar": _archive(), "archive.tar.bz2": bz2.compress(_archive()), "archive.tar.xz": lzma.compress(_archive()),
    # Compressed but no tar inside, and a tar with no entry: Docker copies these as they are.
    "fake.tar.bz2": b"BZh91AY&SY" + bytes(600), "notes.txt.gz": gzip.compress(b"text\n" * 50, mtime=0), "empty.tar": bytes(1024),
}

CORPUS: dict[str, str] = {
    "config": """\
FROM {base}
ARG VERSION=1.0
ENV APP_HOME=/srv/app GREETING="hello world"
ENV LEGACY a value with spaces
LABEL org.example.version=$VERSION maintainer="me" "quoted key"=v
EXPOSE 8080 53/udp 7000-7002
VOLUME ["/data", "/logs"]
VOLUME /more
STOPSIGNAL SIGQUIT
HEALTHCHECK --interval=30s --timeout=5s --retries=3 CMD cat /etc/passwd
SHELL ["/bin/sh", "-ec"]
USER app
WORKDIR /etc
WORKDIR $APP_HOME/sub
ENTRYPOINT ["/bin/sh", "-c"]
CMD echo shell form
MAINTAINER someone@example.com
ONBUILD RUN echo triggered
""",
    "copy": """\
FROM {base}
COPY one.txt /one-file
COPY one.txt two.txt /dest/
COPY files /copied
COPY files/ /copied-slash/
COPY files/sub /etc/
COPY *.txt /globbed/
COPY --chown=app:staff files /owned/
COPY --chown=1234:99 one.txt /numeric
COPY tool.sh /usr/local/bin/
WORKDIR /relative
COPY two.txt ./rel/
COPY . /whole-context/
""",
    "add": """\
FROM {base}
ADD archive.tar.gz /opt/
ADD archive.tar.gz /opt/again
ADD one.txt /added.txt
ADD --chown=app files/a.txt /home/app/
""",
    "add-compressed": """\
FROM {base}
ADD archive.tar /plain/
ADD archive.tar.bz2 /bz/
ADD archive.tar.xz /xz
ADD fake.tar.bz2 notes.txt.gz empty.tar /copied/
ADD --chown=app archive.tar.xz /owned-xz/
""",
    "run": """\
FROM {base}
RUN mkdir -p /made/deep && echo x > /made/deep/file && ln -s deep/file /made/link && chmod 0700 /made
RUN rm /etc/group && rm -rf /home && mkdir /home && echo new > /home/fresh
RUN true
RUN ["/bin/sh", "-c", "echo exec form > /exec"]
ENV FROMENV=yes
ARG BUILDARG=b
RUN echo "$FROMENV $BUILDARG" > /vars && id -u > /uid
WORKDIR /work
RUN touch here && chown 1000:1000 here
USER app
RUN id > /tmp/id-as-app
""",
    "multistage": """\
FROM {base} AS builder
RUN mkdir /out && echo built > /out/artifact && chmod 0751 /out/artifact
COPY two.txt /out/
FROM {base}
COPY --from=builder /out/ /app/
COPY --from=0 /out/artifact /single
LABEL stage=final
""",
    "args": """\
ARG BASE={base}
ARG BUILDARG=meta-default
FROM $BASE
ARG BASE
ARG BUILDARG
ARG LOCAL=local-default
ENV FROM_ARG=$LOCAL
RUN echo "$BASE|$BUILDARG|$LOCAL|$FROM_ARG" > /vals
ENV LOCAL=env-wins
RUN echo "$LOCAL" > /shadowed
LABEL base=$BASE arg=${BUILDARG:+set} missing=${NOPE:-none}
""",
    "entrypoint": """\
FROM {base}
CMD ["echo", "base cmd"]
ENTRYPOINT ["/bin/echo"]
FROM {base}
ENTRYPOINT /bin/echo shell
CMD ["kept"]
""",
}


def docker_build(dk: DockerObjects, ctx: Path, what: str) -> str:
    ref = dk.image(what)
    env = dict(os.environ, DOCKER_BUILDKIT="0")
    r = subprocess.run(["docker", "build", "-q", "--build-arg", "BUILDARG=from-cli", "-t", ref, str(ctx)], capture_output=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return ref


def config_fields(img: ovlcore.Image) -> dict[str, Any]:
    cfg = img.config.get("config") or {}
    return {k: cfg[k] for k in FIELDS if cfg.get(k) not in (None, [], {}, "")}


def shape(img: ovlcore.Image) -> list[bool]:
    return [bool(h.get("empty_layer")) for h in img.config.get("history") or []]


@pytest.fixture
def base_ref(dk: DockerObjects, store: ovlcore.Store, tmp_path: Path) -> str:
    ref = dk.image("busybox")
    busybox_image(store, ref)
    archive = tmp_path / "base.tar"
    store.images.save(ref, archive)
    run("docker", "load", "-i", str(archive))
    return ref


@needs_runtime()
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_same_image_as_docker(name: str, dk: DockerObjects, store: ovlcore.Store, base_ref: str, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", {**FILES, "Dockerfile": CORPUS[name].replace("{base}", base_ref)})
    ours = store.images.build(ctx, build_args={"BUILDARG": "from-cli"})
    theirs_ref = docker_build(dk, ctx, name)
    saved = tmp_path / "docker.tar"
    run("docker", "save", "-o", str(saved), theirs_ref)
    other = open_store(tmp_path / "docker-store")
    (theirs,) = other.images.load(saved)
    assert config_fields(ours) == config_fields(theirs)
    assert shape(ours) == shape(theirs), ([h["created_by"] for h in ours.config["history"]], [h["created_by"] for h in theirs.config["history"]])
    assert len(ours.diff_ids) == len(theirs.diff_ids)
    assert compare_trees(fs_tree(ours.fs), fs_tree(theirs.fs), times=False, names=("ovlcore", "docker")) == []
    assert (ours.config.get("author") or None) == (theirs.config.get("author") or None)


@needs_runtime()
def test_onbuild_child_as_docker(dk: DockerObjects, store: ovlcore.Store, base_ref: str, tmp_path: Path) -> None:
    parent_df = f"FROM {base_ref}\nONBUILD COPY one.txt /from-trigger\nONBUILD RUN echo ran > /ran\n"
    ctx = write_context(tmp_path / "ctx", {**FILES, "Dockerfile": parent_df})
    parent_ref = docker_build(dk, ctx, "parent")
    store.images.build(ctx, tag=parent_ref)
    (ctx / "Dockerfile").write_text(f"FROM {parent_ref}\nLABEL child=1\n")
    ours = store.images.build(ctx)
    theirs_ref = docker_build(dk, ctx, "child")
    saved = tmp_path / "docker.tar"
    run("docker", "save", "-o", str(saved), theirs_ref)
    (theirs,) = open_store(tmp_path / "docker-store").images.load(saved)
    assert config_fields(ours) == config_fields(theirs)
    assert shape(ours) == shape(theirs)
    assert compare_trees(fs_tree(ours.fs), fs_tree(theirs.fs), times=False, names=("ovlcore", "docker")) == []
