"""Compressed test data: gzip, zstd (through the ``zstd`` command line tool), and bzip2/xz (read, as Docker
reads them, never written)."""

from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import subprocess

import pytest


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _zstd(args: list[str], data: bytes) -> bytes:
    if shutil.which("zstd") is None:
        pytest.skip("the zstd command line tool is not installed")
    return subprocess.run(["zstd", "-q", *args], input=data, stdout=subprocess.PIPE, check=True).stdout


def zstd_bytes(data: bytes) -> bytes:
    return _zstd(["-c", "-3"], data)


def unzstd_bytes(data: bytes) -> bytes:
    return _zstd(["-d", "-c"], data)


def bzip2_bytes(data: bytes) -> bytes:
    return bz2.compress(data)


def xz_bytes(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_XZ)
