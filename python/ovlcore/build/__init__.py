"""Builds from Dockerfiles (``store.images.build``, ``ovlcore build``), daemonless: the Dockerfile language
(:mod:`.dockerfile`, :mod:`.expand`), the build context and ``.dockerignore`` (:mod:`.context`,
:mod:`.ignore`), ``RUN`` through an OCI runtime (:mod:`.runtime`) and the steps, cache and history
(:mod:`.builder`)."""

from __future__ import annotations

from .builder import Builder
from .dockerfile import Dockerfile, Instruction, parse

__all__ = ["Builder", "Dockerfile", "Instruction", "parse"]
