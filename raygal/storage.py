"""One place that turns a URI into a filesystem.

Every read and write of data, manifests and checkpoints in raygal goes through this module, so a
dataset can live on a local disk or in any S3-compatible object store with the same code.

URIs::

    /data/survey, ./survey, file:///data/survey   local paths
    s3://bucket/prefix                             S3 or an S3-compatible store

The S3 endpoint comes, in order, from the ``endpoint_url`` argument, ``RAYGAL_S3_ENDPOINT_URL``,
``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``; credentials and region from the standard AWS
chain (environment, ``~/.aws/credentials`` and ``config``, instance roles). Credentials are never
printed, logged or put in error messages.

Two kinds of filesystem are handed out: pyarrow's own (``arrow_fs``), several times faster for
Parquet and as fast as s3fs for whole small files (cutouts, manifests) and ranged reads (FITS
tables), so every read goes through it; and fsspec's (``fsspec_fs``: s3fs for S3), used where
pyarrow has no equivalent: an exclusive create (``create_exclusive``, S3's conditional PUT),
which the one-writer lease (``raygal.lease``) needs.

Publication: ``write_bytes`` never leaves half a file under the final name (local: a hidden
temporary file and a rename; S3: a PUT is atomic). Hidden temporary names start with ``.`` so
that Parquet readers skip them.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs

ENDPOINT_ENV_VARS = ("RAYGAL_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


class StorageError(OSError):
    """A URI could not be reached or used (no such bucket, wrong endpoint, no permission)."""


@dataclass(frozen=True)
class Location:
    scheme: str          # "file" or "s3"
    path: str            # local absolute path, or "bucket/key" for s3
    uri: str             # normalised URI

    @property
    def is_s3(self) -> bool:
        return self.scheme == "s3"

    @property
    def bucket(self) -> str | None:
        return self.path.split("/", 1)[0] if self.is_s3 else None


def parse_uri(uri: str | os.PathLike) -> Location:
    uri = os.fspath(uri)
    if uri.startswith("s3://") or uri.startswith("s3a://"):
        p = urlparse(uri)
        if not p.netloc:
            raise ValueError(f"{uri!r}: an s3 URI needs a bucket, e.g. s3://bucket/prefix")
        path = (p.netloc + "/" + p.path.lstrip("/")).rstrip("/")
        return Location("s3", path, "s3://" + path)
    if uri.startswith("file://"):
        uri = urlparse(uri).path
    if "://" in uri:
        raise ValueError(f"{uri!r}: unsupported URI scheme (use a local path or s3://)")
    path = os.path.abspath(os.path.expanduser(uri))
    return Location("file", path, path)


def join(uri: str, *parts: str) -> str:
    loc = parse_uri(uri)
    if loc.is_s3:
        return "s3://" + posixpath.join(loc.path, *parts)
    return os.path.join(loc.path, *parts)


def forwarded_env() -> dict[str, str]:
    """The storage settings of this process that other processes (Ray workers) should share:
    the S3 endpoint and region variables that are set. Never credentials."""
    names = (*ENDPOINT_ENV_VARS, "AWS_REGION", "AWS_DEFAULT_REGION")
    return {k: os.environ[k] for k in names if os.environ.get(k)}


def endpoint_url(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit
    for var in ENDPOINT_ENV_VARS:
        if os.environ.get(var):
            return os.environ[var]
    return None


def _split_endpoint(url: str) -> tuple[str, str]:
    p = urlparse(url if "://" in url else "https://" + url)
    return p.scheme, p.netloc


def arrow_fs(uri: str, endpoint: str | None = None) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for ``uri``. Use for Parquet and Ray Data."""
    loc = parse_uri(uri)
    if not loc.is_s3:
        return pafs.LocalFileSystem(), loc.path
    kwargs = dict(connect_timeout=5, request_timeout=30,
                  retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=3))
    ep = endpoint_url(endpoint)
    if ep:
        scheme, netloc = _split_endpoint(ep)
        kwargs.update(endpoint_override=netloc, scheme=scheme)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs), loc.path


def fsspec_fs(uri: str, endpoint: str | None = None):
    """(fsspec filesystem, path inside it) for ``uri``. Use for files: FITS, images, JSON."""
    import fsspec

    loc = parse_uri(uri)
    if not loc.is_s3:
        return fsspec.filesystem("file"), loc.path
    import s3fs

    client_kwargs = {}
    ep = endpoint_url(endpoint)
    if ep:
        client_kwargs["endpoint_url"] = ep
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        client_kwargs["region_name"] = region
    fs = s3fs.S3FileSystem(client_kwargs=client_kwargs,
                           config_kwargs={"connect_timeout": 5, "read_timeout": 30,
                                          "retries": {"max_attempts": 2}},
                           skip_instance_cache=False)
    return fs, loc.path


def _wrap(uri: str, exc: Exception) -> StorageError:
    """An error that names the URI (and endpoint) but never the credentials."""
    loc = parse_uri(uri)
    where = uri
    if loc.is_s3:
        ep = endpoint_url()
        where += f" (endpoint {ep})" if ep else " (AWS default endpoint)"
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    for secret_var in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        secret = os.environ.get(secret_var)
        if secret:
            msg = msg.replace(secret, "***")
    return StorageError(f"{where}: {msg}")


def check_reachable(uri: str) -> None:
    """Fail early with a clear error if ``uri``'s bucket (or local parent) cannot be used."""
    loc = parse_uri(uri)
    if not loc.is_s3:
        return
    fs, _ = arrow_fs(uri)
    try:
        info = fs.get_file_info(loc.bucket)
    except Exception as exc:  # connection refused, DNS, auth
        raise _wrap(uri, exc) from None
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"{uri}: bucket {loc.bucket!r} does not exist")


def exists(uri: str) -> bool:
    fs, path = arrow_fs(uri)
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except Exception as exc:
        raise _wrap(uri, exc) from None


def is_dir(uri: str) -> bool:
    """True if ``uri`` is a local folder or an S3 prefix with objects under it."""
    fs, path = arrow_fs(uri)
    try:
        return fs.get_file_info(path).type == pafs.FileType.Directory
    except Exception as exc:
        raise _wrap(uri, exc) from None


def makedirs(uri: str) -> None:
    loc = parse_uri(uri)
    if loc.is_s3:
        check_reachable(uri)
        return  # object stores have no directories
    os.makedirs(loc.path, exist_ok=True)


def listdir(uri: str, suffix: str = "", hidden: bool = False, folders: bool = False
            ) -> list[str]:
    """Sorted URIs of the files (of the folders, with ``folders``) directly under ``uri``
    whose names end with ``suffix``; names starting with ``.`` (temporary files) are left out
    unless ``hidden``."""
    fs, path = arrow_fs(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except Exception as exc:
        raise _wrap(uri, exc) from None
    loc = parse_uri(uri)
    kind = pafs.FileType.Directory if folders else pafs.FileType.File
    out = []
    for info in infos:
        if info.type != kind or not info.base_name.endswith(suffix):
            continue
        if info.base_name.startswith(".") and not hidden:
            continue
        out.append("s3://" + info.path if loc.is_s3 else info.path)
    return sorted(out)


def open_input(uri: str):
    """A binary file object for reading ``uri``."""
    fs, path = arrow_fs(uri)
    try:
        return fs.open_input_file(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: no such file") from None
    except Exception as exc:
        raise _wrap(uri, exc) from None


def read_bytes(uri: str) -> bytes:
    with open_input(uri) as f:
        return f.read()


def hidden_temp_path(path: str) -> str:
    """A unique hidden sibling of local ``path`` (``.<name>.tmp-<pid>-<random>``): Parquet
    readers and raygal's listings skip it, and two writers never share one."""
    d, name = os.path.split(path)
    return os.path.join(d, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri``. Local writes go through a hidden temporary file, an fsync and
    a rename, so a reader (or a crash) never sees half a file; S3 PUTs are atomic already."""
    loc = parse_uri(uri)
    if not loc.is_s3:
        os.makedirs(os.path.dirname(loc.path), exist_ok=True)
        tmp = hidden_temp_path(loc.path)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, loc.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return
    fs, path = arrow_fs(uri)
    try:
        with fs.open_output_stream(path) as f:
            f.write(data)
    except Exception as exc:
        raise _wrap(uri, exc) from None


def create_exclusive(uri: str, data: bytes) -> bool:
    """Write ``data`` to ``uri`` only if no file is there; True if this call created it.

    Local: a hard link, which fails if the name exists. S3: a conditional PUT
    (``If-None-Match: *``) through s3fs, which pyarrow's filesystem cannot send."""
    loc = parse_uri(uri)
    if not loc.is_s3:
        # The content goes to a temporary file first and is hard-linked into place, which
        # fails if the name exists: no one ever reads a created-but-empty file.
        os.makedirs(os.path.dirname(loc.path), exist_ok=True)
        tmp = hidden_temp_path(loc.path)
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, loc.path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
    fs, path = fsspec_fs(uri)
    try:
        fs.pipe_file(path, data, mode="create")
        return True
    except FileExistsError:
        return False
    except Exception as exc:
        raise _wrap(uri, exc) from None


def rename(src: str, dst: str) -> None:
    """Move ``src`` to ``dst``, replacing it (local: one atomic rename; S3: copy, then delete)."""
    fs, spath = arrow_fs(src)
    _, dpath = arrow_fs(dst)
    try:
        fs.move(spath, dpath)
    except FileNotFoundError:
        raise FileNotFoundError(f"{src}: no such file") from None
    except Exception as exc:
        raise _wrap(src, exc) from None


def file_size(uri: str) -> int | None:
    """Size in bytes of the file at ``uri``, or None if there is none."""
    fs, path = arrow_fs(uri)
    try:
        info = fs.get_file_info(path)
    except Exception as exc:
        raise _wrap(uri, exc) from None
    return info.size if info.type == pafs.FileType.File else None


def tree_digest(uri: str) -> str:
    """SHA-256 (32 hex) of every file under the folder ``uri`` (names and contents), e.g. a
    saved model's description and weights: any change to any file changes it."""
    import hashlib

    fs, root = arrow_fs(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: no such folder") from None
    except Exception as exc:
        raise _wrap(uri, exc) from None
    h = hashlib.sha256()
    for info in sorted((i for i in infos if i.type == pafs.FileType.File),
                       key=lambda i: i.path):
        rel = posixpath.relpath(info.path, root)
        if info.base_name.startswith("."):
            continue
        with fs.open_input_stream(info.path) as f:
            h.update(f"{rel}\0{info.size}\0".encode())
            h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()[:32]


def read_json(uri: str):
    return json.loads(read_bytes(uri).decode())


def write_json(uri: str, obj) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True, default=_json_default).encode())


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@contextlib.contextmanager
def staged_folder(uri: str):
    """Write a folder (e.g. a model) under a staging name and publish it at ``uri`` in one
    step when the ``with`` block succeeds; on failure the staging folder is deleted and what
    was at ``uri`` stays as it was.

    Local: ``.<name>.staging-<random>`` beside ``uri``, swapped in by two renames (the old
    folder is moved aside first, then deleted). S3 has no rename: the files are copied from
    the staging prefix, ``model.json``-like descriptions last (names sorted so that files
    named ``*.json`` come after the others), then the staging prefix is deleted."""
    loc = parse_uri(uri)
    parent, name = posixpath.split(loc.uri) if loc.is_s3 else os.path.split(loc.path)
    tag = uuid.uuid4().hex[:8]
    staging = join(parent, f".{name}.staging-{tag}")
    try:
        yield staging
    except BaseException:
        delete(staging, recursive=True)
        raise
    if not loc.is_s3:
        old = os.path.join(parent, f".{name}.old-{tag}")
        if os.path.exists(loc.path):
            os.replace(loc.path, old)
        os.replace(staging, loc.path)
        if os.path.exists(old):
            import shutil

            shutil.rmtree(old, ignore_errors=True)
        return
    fs, spath = arrow_fs(staging)
    _, dpath = arrow_fs(uri)
    infos = [i for i in fs.get_file_info(pafs.FileSelector(spath, recursive=True))
             if i.type == pafs.FileType.File]
    for info in sorted(infos, key=lambda i: (i.base_name.endswith(".json"), i.path)):
        fs.copy_file(info.path, dpath + info.path[len(spath):])
    fs.delete_dir(spath)


def delete(uri: str, recursive: bool = False) -> None:
    fs, path = arrow_fs(uri)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory and recursive:
            fs.delete_dir(path)
        elif info.type == pafs.FileType.File:
            fs.delete_file(path)
    except Exception as exc:
        raise _wrap(uri, exc) from None


def to_buffer(uri: str) -> io.BytesIO:
    return io.BytesIO(read_bytes(uri))
