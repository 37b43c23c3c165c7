"""Dockerfile builds, as Docker's classic builder makes them: one image per instruction (each step's image is
the next one's parent), a history entry for each, ``empty_layer`` for steps that change no file.

A step that changes files runs in a container created on the previous step's image: ``COPY``/``ADD`` write
through the container's union view, ``RUN`` runs the OCI runtime over the container's mounted tree, and the
container's changes become the step's layer through the normal commit path. Config-only steps (``ENV``,
``CMD``, ...) make an image without a layer.

The cache is Docker's own: a step is reused when an image made from the same parent has the same last
history entry (``created_by`` holds the expanded instruction, and for ``COPY``/``ADD`` a digest of the
sources' names, modes, owners and content) and the same runtime config. Intermediate images are untagged
parents of the final one: ``images.prune`` removes a chain once its top is dangling. A failed build removes
its containers and every image (and layer) it made, so nothing of it remains.
"""

from __future__ import annotations

import builtins
import contextlib
import email.utils
import json
import os
import posixpath
import re
import secrets
import stat
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import _ovlcore
from .._config import host_arch
from .._time import format_time
from ..containers import Container, Containers
from ..errors import BuildError, ImageNotFound, OvlError
from ..images import Image, Images
from ..references import full_tag
from .context import Context, Entry, SourceError, has_glob
from .dockerfile import Dockerfile, Instruction, parse, split_words
from .expand import PROXY_ARGS, ExpandError, Lexer, Scope
from .runtime import DEFAULT_PATH, MOUNT_POINTS, Runtime, RuntimeUnavailable, bundle_config, find_runtime, rootless

__all__ = ["Builder"]

Progress = Callable[[str], None]
SCRATCH_CONFIG: dict[str, Any] = {"architecture": "", "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": []}, "history": []}
_URL = re.compile(r"^https?://")


def _platform_of(image: Image) -> str:
    """An image's platform as its config names it (``os/architecture[/variant]``)."""
    parts = [image.config.get(k) for k in ("os", "architecture", "variant")]
    return "/".join(p for p in parts if isinstance(p, str) and p) or "unknown"


def _go_list(values: list[str]) -> str:
    """Go's ``%q`` of a string slice, as Docker writes CMD/ENTRYPOINT into ``created_by``."""
    return "[" + " ".join(json.dumps(v) for v in values) + "]"


def _duration_ns(text: str, flag: str) -> int:
    units = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"--{flag}: invalid duration {text!r}")
    return int(sum(float(n) * units[u] for n, u in parts))


@dataclass
class Stage:
    index: int
    name: str | None
    base: str
    from_ins: Instruction
    platform: str | None
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class State:
    """Where a stage is: its current image, runtime config and variables."""

    image: Image
    config: dict[str, Any]
    scope: Scope
    cmd_set: bool = False
    author: str | None = None

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for e in self.config.get("Env") or []:
            k, _, v = e.partition("=")
            out[k] = v
        return out

    def values(self) -> dict[str, str]:
        self.scope.env = self.env()
        return self.scope.values()

    def shell(self) -> list[str]:
        return list(self.config.get("Shell") or ["/bin/sh", "-c"])


class Build:
    """One run of ``docker build``."""

    def __init__(
        self, images: Images, containers: Containers, context: Path, dockerfile: Path, *, tags: list[str],
        build_args: dict[str, str], target: str | None, labels: dict[str, str], no_cache: bool, pull: bool,
        network: str, runtime: str | None, progress: Progress | None, platform: str | None, epoch: int | None,
    ) -> None:
        self.images = images
        self.containers = containers
        self.context_dir = context
        self.dockerfile_path = dockerfile
        self.tags = tags
        self.build_args = build_args
        self.target = target
        self.labels = labels
        self.no_cache = no_cache
        self.pull = pull
        if network not in ("none", "host", "default", "bridge"):
            raise BuildError(f"unsupported network mode {network!r} (none or host)")
        self.network = "host" if network == "host" else "none"
        self.runtime_name = runtime
        self._runtime: Runtime | None = None
        self.out = progress or (lambda line: None)
        self.platform = platform
        self.epoch = epoch
        self.created = datetime.fromtimestamp(epoch, timezone.utc) if epoch is not None else None
        self.shown = str(dockerfile)
        self.lexer = Lexer()
        self.made: list[str] = []
        self.before: set[str] = set()
        self.stages: list[Stage] = []
        self.results: dict[int, Image] = {}
        self.step_no = 0
        self.step_total = 0
        #: The --build-arg names some ARG declared (the others are reported, as Docker does).
        self.used_args: set[str] = set()

    # ----- errors -----

    def error(self, ins: Instruction | None, message: str, **kw: Any) -> BuildError:
        return BuildError(message, dockerfile=self.shown, line=ins.line if ins else None, **kw)

    # ----- the whole build -----

    def run(self) -> Image:
        try:
            text = self.dockerfile_path.read_text()
        except FileNotFoundError:
            raise BuildError("Cannot locate specified Dockerfile", dockerfile=self.shown) from None
        df = parse(text, self.shown)
        self.lexer = Lexer(df.escape)
        try:
            self.context = Context(self.context_dir)
        except SourceError as e:
            raise BuildError(str(e), dockerfile=self.shown) from None
        meta = self.split_stages(df)
        last = self.pick_target()
        self.step_total = sum(1 + len(s.instructions) for s in self.stages[: last + 1]) + (1 if self.labels else 0)
        self.before = {img.id for img in self.images.list()}
        try:
            for stage in self.stages[: last + 1]:
                self.results[stage.index] = self.build_stage(stage, meta, final=stage.index == last)
            image = self.results[last]
            for t in self.tags:
                self.images.tag(image.id, t)
        except BaseException:
            self.discard()
            raise
        unused = sorted(k for k in self.build_args if k not in self.used_args and k not in PROXY_ARGS)
        if unused:
            self.out(f"[Warning] One or more build-args [{' '.join(unused)}] were not consumed\n")
        self.out(f"Successfully built {image.short_id}\n")
        for t in self.tags:
            self.out(f"Successfully tagged {t}\n")
        return self.images.get(image.id)

    def discard(self) -> None:
        """Remove what this build made (newest first): a failed build leaves nothing behind."""
        for image_id in reversed(self.made):
            if image_id in self.before:
                continue
            with contextlib.suppress(OvlError, OSError):
                if self.images.find(image_id) is not None and not self.images.children(image_id):
                    self.images.remove(image_id, force=False)

    def split_stages(self, df: Dockerfile) -> dict[str, str]:
        meta: dict[str, str] = {}
        for ins in df.instructions:
            if ins.cmd == "FROM":
                words = ins.args.split()
                name = None
                if len(words) == 3 and words[1].lower() == "as":
                    name = words[2].lower()
                    if not re.fullmatch(r"[a-z][a-z0-9-_.]*", name):
                        raise self.error(ins, f"invalid name for build stage: {words[2]!r}, name can't start with a number or contain symbols")
                    if any(s.name == name for s in self.stages):
                        raise self.error(ins, f"duplicate name {words[2]!r}")
                elif len(words) != 1:
                    raise self.error(ins, "FROM requires either one or three arguments")
                try:
                    base = self.lexer.word(words[0], meta)
                    plat = self.lexer.word(ins.flags["platform"], meta) if "platform" in ins.flags else None
                except ExpandError as e:
                    raise self.error(ins, str(e)) from None
                if not base:
                    raise self.error(ins, f"base name ({words[0]}) should not be blank")
                self.stages.append(Stage(len(self.stages), name, base, ins, plat))
            elif not self.stages:
                if ins.cmd != "ARG":
                    raise self.error(ins, "no build stage in current context (the first instruction must be FROM or ARG)")
                for key, default in self.arg_pairs(ins, meta):
                    if key in self.build_args:
                        self.used_args.add(key)
                    meta[key] = self.build_args.get(key, default if default is not None else meta.get(key, ""))
            else:
                self.stages[-1].instructions.append(ins)
        if not self.stages:
            raise BuildError("the Dockerfile has no FROM instruction", dockerfile=self.shown)
        return meta

    def pick_target(self) -> int:
        if self.target is None:
            return len(self.stages) - 1
        for s in self.stages:
            if s.name == self.target.lower():
                return s.index
        raise BuildError(f"failed to reach build target {self.target} in Dockerfile", dockerfile=self.shown)

    def arg_pairs(self, ins: Instruction, env: dict[str, str]) -> list[tuple[str, str | None]]:
        out: list[tuple[str, str | None]] = []
        for w in self.split(ins):
            key, eq, value = w.partition("=")
            if not key:
                raise self.error(ins, f"ARG names can not be blank: {w!r}")
            out.append((key, self.word(ins, value, env) if eq else None))
        return out

    def split(self, ins: Instruction) -> list[str]:
        return split_words(ins.args, self.lexer.escape)

    def word(self, ins: Instruction, text: str, env: dict[str, str]) -> str:
        try:
            return self.lexer.word(text, env)
        except ExpandError as e:
            raise self.error(ins, str(e)) from None

    def words(self, ins: Instruction, text: str, env: dict[str, str]) -> list[str]:
        try:
            return self.lexer.words(text, env)
        except ExpandError as e:
            raise self.error(ins, str(e)) from None

    # ----- stages -----

    def step_line(self, ins: Instruction) -> None:
        self.step_no += 1
        self.out(f"Step {self.step_no}/{self.step_total} : {ins.original}\n")

    def base_image(self, stage: Stage) -> Image:
        ref = stage.base
        for s in self.stages[: stage.index]:
            if s.name == ref.lower():
                return self.results[s.index]
        if ref.lower() == "scratch":
            return self.scratch()
        return self.find_image(
            stage.from_ins, ref, stage.platform or self.platform, lambda e: f"pull access denied or image not found: {ref}: {e}"
        )

    def find_image(self, ins: Instruction, ref: str, platform: str | None, not_found: Callable[[Exception], str]) -> Image:
        """An image named by ``FROM`` or ``COPY --from``, as Docker's builder finds it: the local one, unless
        ``pull`` was asked for or it is not for the requested platform; else pulled (for that platform)."""
        local: Image | None = None
        if not self.pull:
            with contextlib.suppress(ImageNotFound):
                local = self.images.get(ref)
            if local is not None and (platform is None or self.serves(ins, local, platform)):
                return local
        try:
            self.out(f"Pulling {ref}\n")
            return self.images.pull(ref, platform=platform)
        except (OvlError, ValueError) as e:  # ValueError: an invalid platform
            if local is None:
                raise self.error(ins, not_found(e)) from None
            raise self.error(
                ins,
                f"image with reference {ref} was found but does not match the specified platform: wanted {platform}, "
                f"actual: {_platform_of(local)}; pulling {ref} for {platform} failed: {e}",
            ) from None

    def serves(self, ins: Instruction, image: Image, platform: str) -> bool:
        cfg = image.config
        variant = cfg.get("variant")
        try:
            return _ovlcore.platform_matches(
                platform, str(cfg.get("os") or ""), str(cfg.get("architecture") or ""), variant if isinstance(variant, str) else None
            )
        except ValueError as e:
            raise self.error(ins, str(e)) from None

    def scratch(self) -> Image:
        """The empty image ``FROM scratch`` starts from (no layer, no history, same id every time)."""
        cfg = dict(SCRATCH_CONFIG)
        cfg["architecture"] = host_arch()
        image = self.images.create_config(cfg)
        self.made.append(image.id)
        return image

    def build_stage(self, stage: Stage, meta: dict[str, str], final: bool) -> Image:
        self.step_line(stage.from_ins)
        base = self.base_image(stage)
        self.out(f" ---> {base.short_id}\n")
        config = dict(base.config.get("config") or {})
        env = list(config.get("Env") or [])
        if not any(e.startswith("PATH=") for e in env):
            config["Env"] = env + [f"PATH={DEFAULT_PATH}"]
        triggers = list(config.get("OnBuild") or [])
        config.pop("OnBuild", None)
        author = base.config.get("author")
        st = State(base, config, Scope(self.build_args, meta, used=self.used_args), author=author if isinstance(author, str) else None)
        if triggers:
            self.out(f"# Executing {len(triggers)} build trigger{'s' if len(triggers) > 1 else ''}\n")
            for text in triggers:
                for ins in parse(text, self.shown).instructions:
                    ins.line = stage.from_ins.line
                    if ins.cmd in ("FROM", "ONBUILD", "MAINTAINER"):
                        raise self.error(stage.from_ins, f"{ins.cmd} isn't allowed as an ONBUILD trigger")
                    self.dispatch(st, ins, stage)
        for ins in stage.instructions:
            self.step_line(ins)
            self.dispatch(st, ins, stage)
        if final and self.labels:
            line = "LABEL " + " ".join(f"{json.dumps(k)}='{v}'" for k, v in sorted(self.labels.items()))
            ins = parse(line, self.shown).instructions[0]
            ins.line = stage.from_ins.line
            self.step_line(ins)
            self.dispatch(st, ins, stage)
        return st.image

    # ----- steps -----

    def dispatch(self, st: State, ins: Instruction, stage: Stage) -> None:
        handler = getattr(self, f"do_{ins.cmd.lower()}")
        try:
            handler(st, ins)
        except BuildError:
            raise
        except SourceError as e:
            raise self.error(ins, f"{ins.cmd} failed: {e}") from None
        except RuntimeUnavailable as e:
            raise self.error(ins, str(e)) from None
        except (OSError, ValueError, OvlError) as e:
            raise self.error(ins, f"{ins.cmd} failed: {e}") from None

    def nop(self, st: State, text: str, single_space: bool = False) -> str:
        return " ".join(st.shell()) + (" #(nop) " if single_space else " #(nop)  ") + text

    def cached(self, st: State, created_by: str) -> Image | None:
        if self.no_cache:
            return None
        for child in self.images.children(st.image.id):
            cfg = child.config
            history = cfg.get("history") or []
            if not history or history[-1].get("created_by") != created_by:
                continue
            if (cfg.get("config") or {}) != st.config:
                continue
            if self.created is not None and cfg.get("created") != format_time(self.created):
                continue
            if (history[-1].get("author") or None) != st.author:
                continue
            return child
        return None

    def config_step(self, st: State, created_by: str) -> None:
        """A step that changes only the runtime config: an image with an ``empty_layer`` entry."""
        hit = self.cached(st, created_by)
        if hit is not None:
            self.out(" ---> Using cache\n")
            st.image = hit
        else:
            st.image = self.images.create(
                layer=None, parent=st.image, created_by=created_by, config=st.config, created=self.created, author=st.author
            )
            self.made.append(st.image.id)
        self.out(f" ---> {st.image.short_id}\n")

    @contextlib.contextmanager
    def container(self, st: State) -> Iterator[Container]:
        ctr = self.containers.create(st.image, labels={"ovlcore.build": "1"})
        self.out(f" ---> Running in {ctr.short_id}\n")
        try:
            yield ctr
        finally:
            with contextlib.suppress(OvlError, OSError):
                self.containers.remove(ctr.id, force=True)
            self.out(f"Removing intermediate container {ctr.short_id}\n")

    def fs_step(self, st: State, created_by: str, change: Callable[[Container], None]) -> None:
        """A step that may change files: in a container on the current image, committed (or, when
        nothing changed, an ``empty_layer`` image as Docker makes)."""
        hit = self.cached(st, created_by)
        if hit is not None:
            self.out(" ---> Using cache\n")
            st.image = hit
            self.out(f" ---> {st.image.short_id}\n")
            return
        with self.container(st) as ctr:
            change(ctr)
            changes = ctr.diff()
            if self.epoch is not None:
                self.clamp(ctr, [c.path for c in changes if c.kind != "D"])
            if not changes:
                image = self.images.create(
                    layer=None, parent=st.image, created_by=created_by, config=st.config, created=self.created, author=st.author
                )
            else:
                image = ctr.commit(created_by=created_by, config=st.config, created=self.created, author=st.author)
        st.image = image
        self.made.append(image.id)
        self.out(f" ---> {image.short_id}\n")

    def clamp(self, ctr: Container, paths: list[str]) -> None:
        """SOURCE_DATE_EPOCH: no time in the new layer is later than the epoch (so a rebuild gives the same
        layer, and the same image id)."""
        assert self.epoch is not None
        ns = self.epoch * 1_000_000_000
        fs = ctr.fs
        for path in sorted(paths, key=lambda p: -p.count("/")):
            st = fs.lstat(path)
            if st.st_mtime_ns > ns or st.st_atime_ns > ns:
                fs.utime(path, ns=(min(st.st_atime_ns, ns), min(st.st_mtime_ns, ns)), follow_symlinks=False)

    # ----- config-only instructions -----

    def pairs(self, st: State, ins: Instruction) -> list[tuple[str, str]]:
        words = self.split(ins)
        env = st.values()
        if words and "=" not in words[0]:
            key, _, rest = ins.args.partition(" ") if " " in ins.args else ins.args.partition("\t")
            if not rest.strip():
                raise self.error(ins, f"{ins.cmd} names can not be blank" if not key else f"{ins.cmd} must have two arguments")
            return [(self.word(ins, key, env), self.word(ins, rest.strip(), env))]
        out = []
        for w in words:
            key, eq, value = w.partition("=")
            if not eq or not key:
                raise self.error(ins, f"{ins.cmd} {w!r}: expected KEY=VALUE")
            out.append((self.word(ins, key, env), self.word(ins, value, env)))
        return out

    def do_env(self, st: State, ins: Instruction) -> None:
        env = list(st.config.get("Env") or [])
        pairs = self.pairs(st, ins)
        for k, v in pairs:
            env = [e for e in env if e.split("=", 1)[0] != k] + [f"{k}={v}"]
        st.config["Env"] = env
        self.config_step(st, self.nop(st, "ENV " + " ".join(f"{k}={v}" for k, v in pairs)))

    def do_label(self, st: State, ins: Instruction) -> None:
        labels = dict(st.config.get("Labels") or {})
        pairs = self.pairs(st, ins)
        labels.update(pairs)
        st.config["Labels"] = labels
        self.config_step(st, self.nop(st, "LABEL " + " ".join(f"{k}={v}" for k, v in pairs)))

    def do_arg(self, st: State, ins: Instruction) -> None:
        pairs = self.arg_pairs(ins, st.values())
        for k, default in pairs:
            st.scope.declare(k, default)
        self.config_step(st, self.nop(st, "ARG " + " ".join(k if v is None else f"{k}={v}" for k, v in pairs)))

    def exec_form(self, st: State, ins: Instruction) -> list[str]:
        if ins.json is not None:
            return list(ins.json)
        return st.shell() + [ins.args]

    def do_cmd(self, st: State, ins: Instruction) -> None:
        cmd = self.exec_form(st, ins)
        st.config["Cmd"] = cmd
        st.cmd_set = True
        self.config_step(st, self.nop(st, f"CMD {_go_list(cmd)}"))

    def do_entrypoint(self, st: State, ins: Instruction) -> None:
        ep = self.exec_form(st, ins) if ins.args.strip() not in ("[]", "") else None
        if ep is None:
            st.config.pop("Entrypoint", None)
        else:
            st.config["Entrypoint"] = ep
        if not st.cmd_set:
            st.config.pop("Cmd", None)  # an ENTRYPOINT drops the base image's CMD, unless this stage set one
        self.config_step(st, self.nop(st, f"ENTRYPOINT {_go_list(ep or [])}"))

    def do_expose(self, st: State, ins: Instruction) -> None:
        ports = dict(st.config.get("ExposedPorts") or {})
        for p in self.words(ins, ins.args, st.values()):
            port, _, proto = p.partition("/")
            lo, dash, hi = port.partition("-")
            if not lo.isdigit() or (dash and not hi.isdigit()):
                raise self.error(ins, f"invalid containerPort: {port}")
            for n in range(int(lo), int(hi if dash else lo) + 1):
                ports[f"{n}/{(proto or 'tcp').lower()}"] = {}
        st.config["ExposedPorts"] = ports
        self.config_step(st, self.nop(st, "EXPOSE " + " ".join(sorted(ports))))

    def do_volume(self, st: State, ins: Instruction) -> None:
        vols = dict(st.config.get("Volumes") or {})
        env = st.values()
        items = [self.word(ins, v, env) for v in ins.json] if ins.json is not None else self.words(ins, ins.args, env)
        for v in items:
            if not v.strip():
                raise self.error(ins, "VOLUME specified can not be an empty string")
            vols[v] = {}
        st.config["Volumes"] = vols
        self.config_step(st, self.nop(st, f"VOLUME [{' '.join(items)}]"))

    def do_user(self, st: State, ins: Instruction) -> None:
        st.config["User"] = self.word(ins, ins.args, st.values())
        self.config_step(st, self.nop(st, "USER " + st.config["User"]))

    def do_stopsignal(self, st: State, ins: Instruction) -> None:
        sig = self.word(ins, ins.args, st.values())
        if not re.fullmatch(r"(SIG)?[A-Z0-9+-]+|\d+", sig):
            raise self.error(ins, f"invalid signal: {sig}")
        st.config["StopSignal"] = sig
        self.config_step(st, self.nop(st, "STOPSIGNAL " + sig))

    def do_shell(self, st: State, ins: Instruction) -> None:
        if ins.json is None:
            raise self.error(ins, "SHELL requires the arguments to be in JSON form")
        st.config["Shell"] = list(ins.json)
        self.config_step(st, self.nop(st, f"SHELL [{' '.join(ins.json)}]"))

    def do_maintainer(self, st: State, ins: Instruction) -> None:
        st.author = ins.args
        self.config_step(st, self.nop(st, "MAINTAINER " + ins.args))

    def do_onbuild(self, st: State, ins: Instruction) -> None:
        expression = re.sub(r"(?i)^\s*ONBUILD\s*", "", ins.original)
        sub = expression.split(None, 1)[0].upper() if expression.strip() else ""
        if sub in ("ONBUILD", "FROM", "MAINTAINER"):
            raise self.error(ins, f"{sub} isn't allowed as an ONBUILD trigger")
        parse(expression, self.shown)  # a bad trigger fails now, not in the child build
        st.config["OnBuild"] = list(st.config.get("OnBuild") or []) + [expression]
        self.config_step(st, self.nop(st, "ONBUILD " + expression))

    def do_healthcheck(self, st: State, ins: Instruction) -> None:
        words = ins.args.split(None, 1)
        kind = words[0].upper() if words else ""
        if kind == "NONE":
            if len(words) > 1 or ins.flags:
                raise self.error(ins, "HEALTHCHECK NONE takes no arguments")
            hc: dict[str, Any] = {"Test": ["NONE"]}
        elif kind == "CMD" and len(words) == 2:
            rest = words[1].strip()
            try:
                value = json.loads(rest) if rest.startswith("[") else None
            except ValueError:
                value = None
            test = ["CMD"] + value if isinstance(value, list) else ["CMD-SHELL", rest]
            hc = {"Test": test}
            for flag, key in (("interval", "Interval"), ("timeout", "Timeout"), ("start-period", "StartPeriod"), ("start-interval", "StartInterval")):
                if flag in ins.flags:
                    ns = _duration_ns(ins.flags[flag], flag)
                    if ns:
                        hc[key] = ns
            if "retries" in ins.flags:
                try:
                    retries = int(ins.flags["retries"])
                except ValueError:
                    raise self.error(ins, f"--retries: not a number: {ins.flags['retries']!r}") from None
                if retries < 0:
                    raise self.error(ins, "--retries cannot be negative")
                if retries:
                    hc["Retries"] = retries
        else:
            raise self.error(ins, "HEALTHCHECK requires CMD or NONE")
        st.config["Healthcheck"] = hc
        self.config_step(st, self.nop(st, "HEALTHCHECK " + json.dumps(hc, sort_keys=True)))

    # ----- instructions that change files -----

    def do_workdir(self, st: State, ins: Instruction) -> None:
        path = self.word(ins, ins.args, st.values())
        st.config["WorkingDir"] = posixpath.normpath(posixpath.join(st.config.get("WorkingDir") or "/", path))
        workdir = st.config["WorkingDir"]

        def make(ctr: Container) -> None:
            fs = ctr.fs
            if not fs.is_dir(workdir):
                self.mkdirs(fs, workdir, 0, 0)

        self.fs_step(st, self.nop(st, "WORKDIR " + workdir, single_space=True), make)

    def mkdirs(self, fs: Any, path: str, uid: int, gid: int) -> None:
        """``mkdir -p`` with mode 0755 and the owner given to every directory made."""
        parts = [p for p in path.split("/") if p]
        cur = ""
        for part in parts:
            cur += "/" + part
            if fs.is_dir(cur):
                continue
            fs.mkdir(cur, 0o755)
            fs.chmod(cur, 0o755)
            fs.lchown(cur, uid, gid)

    @staticmethod
    def table(fs: Any, path: str) -> list[list[str]]:
        """The rows of a passwd or group file of the image (none when it has no such file)."""
        try:
            return [line.split(":") for line in fs.read_text(path).splitlines() if line and not line.startswith("#")]
        except OSError:
            return []

    def user_ids(self, fs: Any, spec: str, ins: Instruction) -> tuple[int, int]:
        """``user[:group]`` (names or numbers) as the image's passwd and group files have them."""
        user, _, group = spec.partition(":")
        passwd = self.table(fs, "/etc/passwd")
        row = next((r for r in passwd if len(r) > 3 and (r[2] == user if user.isdigit() else r[0] == user)), None)
        if user.isdigit():
            uid = int(user)
            gid = int(row[3]) if row is not None and row[3].isdigit() else 0
        elif row is None:
            raise self.error(ins, f"unable to find user {user}: no matching entries in passwd file")
        else:
            uid, gid = int(row[2]), int(row[3])
        if group:
            if group.isdigit():
                gid = int(group)
            else:
                grow = next((r for r in self.table(fs, "/etc/group") if r[0] == group and len(r) > 2), None)
                if grow is None:
                    raise self.error(ins, f"unable to find group {group}: no matching entries in group file")
                gid = int(grow[2])
        return uid, gid

    def supplementary(self, fs: Any, spec: str, gid: int) -> list[int]:
        """The groups a RUN step's process is in, as Docker computes them: those of the group file that
        list the user, else the primary group alone."""
        user = spec.partition(":")[0]
        if user.isdigit():
            row = next((r for r in self.table(fs, "/etc/passwd") if len(r) > 3 and r[2] == user), None)
            user = row[0] if row is not None else ""
        groups = [int(r[2]) for r in self.table(fs, "/etc/group") if len(r) > 3 and user and user in r[3].split(",") and r[2].isdigit()]
        return groups or [gid]

    def destination(self, st: State, ins: Instruction, dest: str) -> str:
        workdir = st.config.get("WorkingDir") or "/"
        full = dest if dest.startswith("/") else posixpath.join(workdir, dest)
        keep_slash = dest.endswith("/") or dest.endswith("/.") or dest in (".", "")
        full = posixpath.normpath(full)
        return full.rstrip("/") + "/" if keep_slash else full

    def do_copy(self, st: State, ins: Instruction) -> None:
        self.copy(st, ins, add=False)

    def do_add(self, st: State, ins: Instruction) -> None:
        self.copy(st, ins, add=True)

    def copy(self, st: State, ins: Instruction, add: bool) -> None:
        env = st.values()
        items = list(ins.json) if ins.json is not None else ins.args.split()
        if ins.heredocs:
            items = [w for w in items if not w.startswith("<<")]
            if len(items) != 1:
                raise self.error(ins, f"{ins.cmd} with a heredoc takes one destination")
            dest = self.destination(st, ins, self.word(ins, items[0], env))
            return self.copy_heredocs(st, ins, dest, env)
        if len(items) < 2:
            raise self.error(ins, f"{ins.cmd} requires at least two arguments, but only one was provided. Destination could not be determined.")
        items = [self.word(ins, w, env) for w in items]
        srcs, dest_raw = items[:-1], items[-1]
        dest = self.destination(st, ins, dest_raw)
        chown = self.word(ins, ins.flags["chown"], env) if "chown" in ins.flags else None
        chmod = None
        if "chmod" in ins.flags:
            try:
                chmod = int(ins.flags["chmod"], 8)
            except ValueError:
                raise self.error(ins, f"invalid chmod parameter: {ins.flags['chmod']!r}") from None
        from_ref = ins.flags.get("from")
        if from_ref is not None:
            if add:
                raise self.error(ins, "ADD does not take --from")
            return self.copy_from(st, ins, self.word(ins, from_ref, env), srcs, dest, chown, chmod)
        with tempfile.TemporaryDirectory(prefix="ovlcore-add-") as downloads:
            entries: list[Entry] = []
            fetched: set[str] = set()
            for s in srcs:
                if add and _URL.match(s):
                    e = self.download(ins, s, dest, Path(downloads))
                    fetched.add(e.host)
                    entries.append(e)
                else:
                    entries += self.context.sources(s)
            multi = len(entries) > 1 or any(has_glob(s) for s in srcs)
            if multi and not dest.endswith("/"):
                raise self.error(ins, f"When using {ins.cmd} with more than one source file, the destination must be a directory and end with a /")
            digest = self.context.digest(entries)
            kind = "multi" if len(entries) > 1 else ("dir" if entries[0].is_dir else "file")
            flags = "".join(f"--{k}={v} " for k, v in sorted(ins.flags.items()))
            created_by = self.nop(st, f"{ins.cmd} {flags}{kind}:{digest[7:]} in {dest} ", single_space=True)

            def apply(ctr: Container) -> None:
                uid, gid = self.user_ids(ctr.fs, chown, ins) if chown else (0, 0)
                for e in entries:
                    # A local archive is extracted; a downloaded one is not (as Docker does).
                    if add and not e.is_dir and e.host not in fetched and _ovlcore.is_tar_archive(e.host):
                        self.extract(ctr, e, dest)
                    else:
                        self.place(ctr, e, dest, uid, gid, chmod, bool(chown))

            self.fs_step(st, created_by, apply)

    def download(self, ins: Instruction, url: str, dest: str, into: Path) -> Entry:
        """``ADD <url>``: the file fetched with the registries' HTTP client, named after the URL's last path
        component when the destination is a directory; its time is the ``Last-Modified`` it was sent with."""
        name = urllib.parse.urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
        if dest.endswith("/") and not name:
            raise self.error(ins, f"cannot determine a file name from the URL {url}: give a destination file name")
        name = name or "download"
        host = into / f"{len(os.listdir(into))}"
        host.mkdir()
        path = host / name
        self.out(f"Downloading {url}\n")
        try:
            _, _, last_modified = self.images.fetch_url(url, path)
        except OvlError as e:
            raise self.error(ins, f"ADD failed: {e}") from None
        if last_modified:
            with contextlib.suppress(TypeError, ValueError):
                when = email.utils.parsedate_to_datetime(last_modified).timestamp()
                os.utime(path, (when, when))
        return Entry(name, str(path), os.lstat(path))

    def extract(self, ctr: Container, e: Entry, dest: str) -> None:
        # Docker ignores --chown (and --chmod) here: the entries keep the archive's owners, and the
        # directories made for the destination belong to root.
        target = dest.rstrip("/") or "/"
        self.mkdirs(ctr.fs, target, 0, 0)
        ctr.put_archive(target, e.host)

    def place(self, ctr: Container, e: Entry, dest: str, uid: int, gid: int, chmod: int | None, chown: bool) -> None:
        """Copy one context entry to ``dest`` as COPY does: a file into a directory destination (or as the
        destination), a directory's contents into the destination."""
        fs = ctr.fs
        view = fs.view
        if e.is_dir:
            target = dest.rstrip("/") or "/"
            if not fs.is_dir(target):
                self.mkdirs(fs, target, uid, gid)
            if self.context.complete(e):
                parent, name = os.path.split(e.host)
                view.copy_in(parent, name, target, contents=True)
                copied = [target + "/" + x.rel[len(e.rel) + 1:] if e.rel != "." else target.rstrip("/") + "/" + x.rel for x in self.context.walk(e.rel, e.host) if x.rel != e.rel]
            else:
                copied = []
                for x in self.context.walk(e.rel, e.host):
                    if x.rel == e.rel:
                        continue
                    sub = x.rel[len(e.rel) + 1:] if e.rel != "." else x.rel
                    path = target.rstrip("/") + "/" + sub
                    if x.is_dir:
                        if not fs.is_dir(path):
                            fs.mkdir(path, 0o755)
                        fs.chmod(path, stat.S_IMODE(x.st.st_mode))
                    else:
                        parent, name = os.path.split(x.host)
                        view.copy_in(parent, name, path)
                    copied.append(path)
        else:
            if dest.endswith("/") or fs.is_dir(dest):
                target_dir = dest.rstrip("/") or "/"
                path = target_dir.rstrip("/") + "/" + os.path.basename(e.rel)
            else:
                target_dir = posixpath.dirname(dest) or "/"
                path = dest
            if not fs.is_dir(target_dir):
                self.mkdirs(fs, target_dir, uid, gid)
            # The source was found with symbolic links followed: copy what it names.
            parent, name = os.path.split(e.host)
            view.copy_in(parent, name, path, follow_symlinks=True)
            copied = [path]
        if chown or os.geteuid() != 0:
            for p in copied:
                fs.lchown(p, uid, gid)
        if chmod is not None:
            for p in copied:
                if not fs.is_symlink(p):
                    fs.chmod(p, chmod)

    def copy_heredocs(self, st: State, ins: Instruction, dest: str, env: dict[str, str]) -> None:
        docs = [(h.name, self.word(ins, h.content, env) if h.expand else h.content) for h in ins.heredocs]
        digest = _sha({n: c for n, c in docs})
        created_by = self.nop(st, f"{ins.cmd} heredoc:{digest} in {dest} ", single_space=True)
        chown = ins.flags.get("chown")
        mode = int(ins.flags["chmod"], 8) if "chmod" in ins.flags else 0o644

        def apply(ctr: Container) -> None:
            fs = ctr.fs
            uid, gid = self.user_ids(fs, chown, ins) if chown else (0, 0)
            for name, content in docs:
                path = (dest.rstrip("/") + "/" + name) if dest.endswith("/") or len(docs) > 1 or fs.is_dir(dest) else dest
                self.mkdirs(fs, posixpath.dirname(path) or "/", uid, gid)
                fs.write_bytes(path, content.encode())
                fs.chmod(path, mode)
                fs.lchown(path, uid, gid)

        self.fs_step(st, created_by, apply)

    def copy_from(self, st: State, ins: Instruction, ref: str, srcs: list[str], dest: str, chown: str | None, chmod: int | None) -> None:
        source: Image | None = None
        for s in self.stages:
            if s.name == ref.lower() or (ref.isdigit() and int(ref) == s.index):
                if s.index not in self.results:
                    raise self.error(ins, f"COPY --from={ref}: stage {ref} is not built before this one")
                source = self.results[s.index]
        if source is None:
            source = self.find_image(ins, ref, self.platform, lambda e: f"COPY --from={ref}: no such stage or image ({e})")
        flags = "".join(f"--{k}={v} " for k, v in sorted(ins.flags.items()))
        created_by = self.nop(st, f"COPY {flags}from:{source.id[7:]} {' '.join(srcs)} in {dest} ", single_space=True)
        outer = self.context

        def apply(ctr: Container) -> None:
            with source.mount() as root:
                self.context = Context(Path(root))
                try:
                    entries: list[Entry] = []
                    for s in srcs:
                        entries += self.context.sources(s.lstrip("/"))
                    if (len(entries) > 1 or any(has_glob(s) for s in srcs)) and not dest.endswith("/"):
                        raise self.error(ins, "When using COPY with more than one source file, the destination must be a directory and end with a /")
                    uid, gid = self.user_ids(ctr.fs, chown, ins) if chown else (0, 0)
                    for e in entries:
                        self.place(ctr, e, dest, uid, gid, chmod, True)
                finally:
                    self.context = outer

        self.fs_step(st, created_by, apply)

    # ----- RUN -----

    def runtime(self) -> Runtime:
        if self._runtime is None:
            self._runtime = find_runtime(self.runtime_name)
        return self._runtime

    def do_run(self, st: State, ins: Instruction) -> None:
        if "mount" in ins.flags or "security" in ins.flags:
            raise self.error(ins, "RUN --mount and --security need BuildKit; this builder does not support them")
        network = ins.flags.get("network", self.network)
        if ins.json is not None:
            args = list(ins.json)
        elif ins.heredocs:
            line = ins.args.strip()
            if re.fullmatch(r"(<<-?\s*['\"]?\w+['\"]?\s*)+", line):
                args = st.shell() + ["".join(h.content for h in ins.heredocs)]
            else:
                script = line + "\n" + "".join(h.content + h.name + "\n" for h in ins.heredocs)
                args = st.shell() + [script]
        else:
            args = st.shell() + [ins.args]
        st.values()  # the scope sees the current ENV: an ENV shadows an ARG of the same name
        run_args = st.scope.run_args()
        shown = [f"{k}={v}" for k, v in run_args if k not in PROXY_ARGS]
        created_by = " ".join((([f"|{len(shown)}"] + shown) if shown else []) + args)
        env = list(st.config.get("Env") or [])
        env += [f"{k}={v}" for k, v in run_args]

        def run(ctr: Container) -> None:
            runtime = self.runtime()
            fs = ctr.fs
            uid, gid = self.user_ids(fs, st.config.get("User") or "0", ins) if st.config.get("User") else (0, 0)
            if rootless() and (uid, gid) != (0, 0):
                raise self.error(
                    ins, f"RUN as user {st.config.get('User')} ({uid}:{gid}) needs root: rootless builds map only the caller, to root"
                )
            # Rootless, the user namespace denies setgroups(2): no supplementary groups there.
            groups = [] if rootless() else self.supplementary(fs, st.config.get("User") or "0", gid)
            names = {e.split("=", 1)[0] for e in env}
            full_env = list(env)
            if "HOSTNAME" not in names:
                full_env.append(f"HOSTNAME={ctr.short_id}")
            if "HOME" not in names:
                full_env.append("HOME=" + self.home(fs, uid))
            missing = [p for p in MOUNT_POINTS if not fs.lexists(p)]
            # Rootless, the runtime's user namespace maps its root to this user: the mount shows root's files so.
            root_as = (os.geteuid(), os.getegid()) if rootless() else None
            with ctr.mount(root_as=root_as) as root:
                config = bundle_config(
                    str(root), args, full_env, st.config.get("WorkingDir") or "/", uid, gid, hostname=ctr.short_id,
                    network=network, additional_gids=groups,
                )
                result = runtime.run(config, f"ovlcore-build-{ctr.short_id}-{secrets.token_hex(4)}", output=self.out)
            if missing:
                ctr.fs.view.remove_empty_mount_points(missing)
            if result.exit_code != 0:
                raise BuildError(
                    f"The command '{' '.join(args)}' returned a non-zero code: {result.exit_code} (runtime {runtime.name})",
                    dockerfile=self.shown, line=ins.line, exit_code=result.exit_code, output=result.tail,
                )

        self.fs_step(st, created_by, run)

    def home(self, fs: Any, uid: int) -> str:
        with contextlib.suppress(OSError):
            for line in fs.read_text("/etc/passwd").splitlines():
                row = line.split(":")
                if len(row) > 5 and row[2] == str(uid):
                    return str(row[5])
        return "/root" if uid == 0 else "/"


def _sha(value: Any) -> str:
    return _ovlcore.sha256(json.dumps(value, sort_keys=True).encode())[7:]


class Builder:
    """``store.images.build`` (the store gives it its images and containers)."""

    def __init__(self, images: Images, containers: Containers) -> None:
        self.images = images
        self.containers = containers

    def build(
        self, context: str | os.PathLike[str], *, dockerfile: str | os.PathLike[str] = "Dockerfile",
        tag: str | builtins.list[str] | None = None, build_args: dict[str, str] | None = None, target: str | None = None,
        labels: dict[str, str] | None = None, no_cache: bool = False, pull: bool = False, network: str = "none",
        runtime: str | None = None, progress: Progress | None = None, platform: str | None = None,
        source_date_epoch: int | None = None, **unknown: Any,
    ) -> Image:
        if unknown:
            raise TypeError(f"build() got unexpected options: {', '.join(sorted(unknown))}")
        ctx = Path(context)
        df = Path(dockerfile)
        if not df.is_absolute():
            df = ctx / df
        tags = [tag] if isinstance(tag, str) else list(tag or [])
        tags = [full_tag(t) for t in tags]
        if source_date_epoch is None and os.environ.get("SOURCE_DATE_EPOCH"):
            try:
                source_date_epoch = int(os.environ["SOURCE_DATE_EPOCH"])
            except ValueError:
                raise BuildError(f"SOURCE_DATE_EPOCH={os.environ['SOURCE_DATE_EPOCH']!r} is not a number of seconds") from None
        b = Build(
            self.images, self.containers, ctx, df, tags=tags, build_args=dict(build_args or {}), target=target,
            labels=dict(labels or {}), no_cache=no_cache, pull=pull, network=network, runtime=runtime, progress=progress,
            platform=platform, epoch=source_date_epoch,
        )
        return b.run()
