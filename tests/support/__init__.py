"""What the test suite is built from, one subject a module (the fixtures on top are in ``tests/conftest.py``).

* :mod:`support.privilege` the two metadata conventions, ``IS_ROOT``, ``needs_root``, ``OVLCORE_PRIVILEGE``
* :mod:`support.stores` opening stores, the sandbox around them, staging leftovers
* :mod:`support.tars` the one tar builder (every entry kind, hostile raw headers)
* :mod:`support.compression` gzip, zstd, bzip2 and xz of test data
* :mod:`support.digests` sha256 digests and OCI chain ids, computed independently of the product
* :mod:`support.images` the sample images the tests start from
* :mod:`support.layout` the overlay on-disk format: whiteouts, opaque markers, writable layers
* :mod:`support.trees` describing, comparing and snapshotting file trees
* :mod:`support.diffs` ``docker diff`` computed from two merged trees
* :mod:`support.layer_apply` independent appliers of OCI layer tars (an in-memory model, GNU tar)
* :mod:`support.kernel` kernel overlayfs mounts (the reference oracle)
* :mod:`support.docker` the Docker engine oracle: found or skipped, its objects cleaned up, a busybox rootfs
* :mod:`support.operations` random file-system operations for the differential tests
* :mod:`support.cli` running the installed ``ovlcore`` command
* :mod:`support.terminal` running a command on a pseudo-terminal (progress bars)
* :mod:`support.workload` the stress test's worker process
* :mod:`support.certs` a test CA, server certificates, ``certs.d`` directories, ES256 JWTs
* :mod:`support.loopback` threaded HTTP(S) servers on loopback with a request log; free ports
* :mod:`support.token_server` a distribution token server (per-user scopes)
* :mod:`support.registry` Debian's ``docker-registry`` started in a mode: plain, Basic over TLS, token
* :mod:`support.fault_registry` a distribution API server that misbehaves on purpose
* :mod:`support.oci` registry-side images: blobs, manifests, indexes, OCI layouts
* :mod:`support.credentials` the client's credential files, isolated per test

Everything generates its data in code. ``tests/`` itself is the import root: pytest puts it on ``sys.path``
(``rootdir/conftest.py``), and child processes get it through :data:`support.TESTS_DIR`.
"""

from pathlib import Path

#: The directory that holds ``support/`` (what a child process needs on ``sys.path`` to import it).
TESTS_DIR = Path(__file__).resolve().parent.parent
