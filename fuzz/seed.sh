#!/usr/bin/env bash
# Seed corpus for the layer-import fuzzer, generated (no binary blobs in the repository): small archives
# in GNU, PAX and ustar formats with directories, links, symlinks, whiteouts and an opaque marker.
set -euo pipefail
cd "$(dirname "$0")"
out=corpus/import_layer
mkdir -p "$out"
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
mkdir -p "$src/a/b" "$src/c"
echo hello > "$src/a/b/file"
ln -s /etc/passwd "$src/a/abs-link"
ln -s ../c "$src/a/rel-link"
ln "$src/a/b/file" "$src/a/hard"
: > "$src/a/.wh.gone"
: > "$src/c/.wh..wh..opq"
mkfifo "$src/c/fifo"
printf '%0200d' 0 > "$src/a/b/$(printf 'n%.0s' $(seq 120))"
for fmt in gnu pax ustar; do
    tar -C "$src" --format=$fmt -cf "$out/$fmt.tar" a c 2>/dev/null || true
done
gzip -c "$out/pax.tar" > "$out/pax.tar.gz"
zstd -q -c "$out/gnu.tar" > "$out/gnu.tar.zst" 2>/dev/null || true
# PAX records whose values hold newlines and any byte (a binary xattr), then a long path record.
python3 - "$out/pax-binary-xattr.tar" <<'PY'
import io, sys, tarfile
with tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT) as tf:
    ti = tarfile.TarInfo("n" * 120)
    ti.size = 2
    ti.pax_headers = {"SCHILY.xattr.user.bin": bytes(range(256)).decode("utf-8", "surrogateescape"), "SCHILY.xattr.user.nl": "a\nb"}
    tf.addfile(ti, io.BytesIO(b"hi"))
PY
