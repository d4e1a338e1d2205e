"""One store API over fsspec, so `file://` and `s3://` take the same code path.

Writes are atomic: on a local filesystem a temporary file is renamed over the
key; on object stores a single PUT is already all-or-nothing, so a reader never
sees half an object. Multi-file objects (model versions) are committed by the
manifest or pointer that is written last.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.config import unsupported_store_root

log = logging.getLogger(__name__)

LOST_RACE_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
"""S3 error codes of a conditional PUT that did not apply: 412, the condition failed; 409,
AWS was applying another conditional write to the key at that moment. Both mean 'read again'."""

WRITE_ID = "nightowl-write-id"
"""User metadata of a conditional PUT: a fresh id per write, so a retry that fails its own
precondition can tell "my first attempt landed" from "another writer won"."""

between_read_and_write: Callable[[Store, str], None] | None = None
"""Test-only interleaving hook: when set, `update_json` calls it with (store, key) after
reading the key and before its conditional write, so a test can force a competing write
exactly there instead of hoping threads collide."""


class StoreError(RuntimeError):
    """A store operation failed; the message names the key."""


class UnsafeKeyError(ValueError):
    """A key or key component that could leave the store root or collide with another key."""


class ContendedError(StoreError):
    """A compare-and-swap update kept losing to other writers."""


class UnsupportedStoreError(StoreError):
    """A store that cannot keep a promise nightowl relies on (a scheme, conditional writes)."""


# One user-supplied key component (a run id, a day, a name): no separators, no dot-dot, short.
# Always applied with `fullmatch`: `$` alone would also accept a trailing newline ("abc\n").
SAFE_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def safe_component(value: str, what: str) -> str:
    """`value` if it is safe as one segment of a store key, else UnsafeKeyError naming `what`.

    Applied to everything a user can type that ends up in a key (run ids, deployment
    parameters), so `../..` or an absolute path can never address outside the store.
    """
    if not isinstance(value, str) or not SAFE_COMPONENT.fullmatch(value) or ".." in value:
        shown = repr(value)[:80]
        raise UnsafeKeyError(
            f"{what} {shown} is not allowed: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, without '..'"
        )
    return value


def json_bytes(obj: Any) -> bytes:
    """The one JSON encoding of stored artifacts: sorted keys, so equal content hashes equal.

    Strict JSON: a non-finite float becomes null (DuckDB, jq and browsers reject NaN),
    so code reading numbers back treats None like NaN; unknown objects become strings.
    """
    return json.dumps(finite(obj), indent=2, sort_keys=True, default=str,
                      allow_nan=False).encode()


def finite(obj: Any) -> Any:
    """A copy with NaN/inf replaced by None and tuples as lists: what strict JSON can hold."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Store:
    """Keys are '/'-separated paths under one root URL (file://... or s3://bucket/prefix)."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None) -> None:
        if problem := unsupported_store_root(root):
            raise UnsupportedStoreError(problem)
        options = dict(storage_options or {})
        if root.startswith("s3://"):
            options = merge_options(_s3_options_from_env(), options)
            # s3fs caches listings with no expiry, per process: a long-lived worker would
            # never see a key another process wrote later. Every listing asks S3.
            options["use_listings_cache"] = False
        self.fs, path = fsspec.core.url_to_fs(root, **options)
        self.is_local = "file" in _protocols(self.fs)
        self.root = os.path.abspath(path) if self.is_local else path.rstrip("/")
        self.url = root
        self._conditional_checked = self.is_local  # a local store's CAS is a file lock
        self._probe_lock = threading.Lock()

    def __repr__(self) -> str:  # never print credentials
        return f"Store({self.url!r})"

    # -- paths -------------------------------------------------------------------------
    def path(self, key: str) -> str:
        return f"{self.root}/{_checked_key(key)}"

    def uri(self, key: str) -> str:
        """A URL for a key that other tools (DuckDB, polars, Spark) can open."""
        scheme = "file://" if self.is_local else f"{_protocols(self.fs)[0]}://"
        return scheme + self.path(key)

    def sign(self, key: str, expires_s: int) -> str:
        """A presigned HTTP(S) GET URL for one object, valid `expires_s` seconds (S3 only).

        The URL carries a signature and the access key id, never the secret key.
        """
        if self.is_local:
            raise StoreError(f"{self.uri(key)}: only object stores can presign a URL")
        return self.fs.sign(self.path(key), expiration=int(expires_s))

    # -- reading -----------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(key))
        except FileNotFoundError:
            raise StoreError(f"{self.uri(key)}: not found") from None

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def read_many(self, keys: list[str]) -> dict[str, bytes]:
        """The bytes of several keys in one call (concurrent on S3); absent keys are left out."""
        if not keys:
            return {}
        paths = {self.path(k): k for k in keys}
        found = self.fs.cat(list(paths), on_error="omit")
        return {paths[p]: data for p, data in found.items() if p in paths}

    def read_parquet(self, key: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(io.BytesIO(self.read_bytes(key)), columns=columns)

    def list(self, prefix: str) -> list[str]:
        """Keys of all files below a prefix, sorted; [] when the prefix does not exist."""
        base = self.path(prefix).rstrip("/")
        if not self.fs.exists(base):
            return []
        found = self.fs.find(base)
        return sorted(p[len(self.root) + 1 :] for p in found if not _is_temporary(p))

    def list_dirs(self, prefix: str) -> list[str]:
        """Names of the immediate sub-folders of a prefix."""
        base = self.path(prefix).rstrip("/")
        if not self.fs.exists(base):
            return []
        entries = self.fs.ls(base, detail=True)
        return sorted(
            e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory"
        )

    # -- writing -----------------------------------------------------------------------
    def write_bytes(self, key: str, data: bytes) -> str:
        """Write atomically; returns the sha256 of what was written."""
        target = self.path(key)
        if self.is_local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = f"{target}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        else:
            self.fs.pipe_file(target, data)
        return sha256_bytes(data)

    def write_json(self, key: str, obj: Any) -> str:
        return self.write_bytes(key, json_bytes(obj))

    def write_parquet(self, key: str, table: pa.Table) -> str:
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        return self.write_bytes(key, buf.getvalue())

    def delete_many(self, keys: list[str]) -> None:
        """Remove keys; ones already gone are fine (deletes are retried after crashes)."""
        for key in keys:
            self.delete(key)

    # -- compare-and-swap ---------------------------------------------------------------
    def read_tagged(self, key: str) -> tuple[bytes | None, str | None]:
        """(data, tag) of a key, (None, None) when absent; the tag feeds `write_if`.

        On S3 the tag is the ETag, read BEFORE the body: if a writer slips in
        between, our conditional write then fails (safe) instead of succeeding
        on stale data (a lost update).
        """
        if self.is_local:
            try:
                with open(self.path(key), "rb") as fh:
                    data = fh.read()
            except FileNotFoundError:
                return None, None
            return data, sha256_bytes(data)
        try:
            tag = self.fs.info(self.path(key), refresh=True)["ETag"]
        except FileNotFoundError:
            return None, None
        return self.read_bytes(key), tag

    def write_if(self, key: str, data: bytes, tag: str | None) -> bool:
        """Write only if the key still has `tag` (None: only if it does not exist yet).

        S3: one conditional PUT (If-Match / If-None-Match), atomic on the server, of any
        size (one PUT holds up to 5 GB; s3fs's multipart path would drop the condition).
        Local: the same check under an exclusive file lock. False means someone else
        wrote first; nothing was written. The first call checks that the store really
        honours the conditions (`check_conditional_writes`).
        """
        if self.is_local:
            with self.lock(key):
                if self.read_tagged(key)[1] != tag:
                    return False
                self.write_bytes(key, data)
                return True
        self.check_conditional_writes()
        return self._put_if(key, data, tag)

    def _put_if(self, key: str, data: bytes, tag: str | None) -> bool:
        """One conditional PUT straight through the s3fs client (see `write_if`)."""
        target = self.path(key)
        bucket, object_key, _ = self.fs.split_path(target)
        condition = {"IfMatch": tag} if tag else {"IfNoneMatch": "*"}
        write_id = uuid.uuid4().hex
        try:
            self.fs.call_s3("put_object", Bucket=bucket, Key=object_key, Body=data,
                            Metadata={WRITE_ID: write_id}, **condition)
        except OSError as err:
            if not lost_race(err):
                raise
            # A retried PUT whose first attempt did land (the reply was lost) fails its
            # own precondition: the object then carries our write id, which is success.
            # Equal bytes would not tell: another writer may have written the same value.
            return self._write_id(bucket, object_key) == write_id
        finally:
            self.fs.invalidate_cache(target)
        return True

    def _write_id(self, bucket: str, object_key: str) -> str | None:
        """The write id a `_put_if` stored on an object (None: absent, or written otherwise)."""
        try:
            head = self.fs.call_s3("head_object", Bucket=bucket, Key=object_key)
        except FileNotFoundError:
            return None
        return head.get("Metadata", {}).get(WRITE_ID)

    def check_conditional_writes(self) -> None:
        """Probe, once per store object, that conditional create and conditional replace
        are enforced, on a probe key; UnsupportedStoreError says what to do when not.

        Why: an older S3-compatible server that ignores If-None-Match / If-Match accepts
        every conditional PUT, so two concurrent promotions or ledger updates both
        "win" and one is silently lost. Only a store that refuses the wrong write is safe.
        """
        if self._conditional_checked:
            return
        with self._probe_lock:
            if self._conditional_checked:
                return
            key = f"_nightowl/probe-conditional-{uuid.uuid4().hex}.json"
            try:
                failure = self._probe(key)
            finally:
                self.delete(key)
            if failure:
                raise UnsupportedStoreError(
                    f"{self.url}: the store does not honour conditional writes ({failure}). "
                    "nightowl needs them for champion promotion, ledgers and drift events, or "
                    "concurrent runs silently lose updates. Use AWS S3 or an S3-compatible "
                    "server that enforces If-None-Match and If-Match on PUT (e.g. a current "
                    "MinIO), or a file:// root on one machine")
            self._conditional_checked = True

    def _probe(self, key: str) -> str | None:
        """What the store got wrong on a probe key, or None when it kept every condition."""
        if not self._put_if(key, b'{"probe": 1}', None):
            return "a conditional create of a new key was refused"
        if self._put_if(key, b'{"probe": 2}', None):
            return "a second conditional create (If-None-Match: *) of the same key succeeded"
        _, tag = self.read_tagged(key)
        if self._put_if(key, b'{"probe": 3}', '"0123456789abcdef0123456789abcdef"'):
            return "a conditional replace with a stale ETag (If-Match) succeeded"
        if not self._put_if(key, b'{"probe": 4}', tag):
            return "a conditional replace with the current ETag (If-Match) was refused"
        return None

    def update_json(
        self, key: str, change: Callable[[Any], Any], max_attempts: int = 50
    ) -> tuple[Any, bool]:
        """Read-modify-write of one JSON key by compare-and-swap, retried on conflict.

        `change(current)` gets the parsed value (None when absent) and returns the new
        value, or `current` itself (the same object) to write nothing. It may run more
        than once, so it must not have side effects. Returns (value now stored, written?).
        """
        for attempt in range(max_attempts):
            data, tag = self.read_tagged(key)
            current = json.loads(data) if data is not None else None
            new = change(current)
            if new is current:
                return current, False
            if between_read_and_write is not None:
                between_read_and_write(self, key)
            if self.write_if(key, json_bytes(new), tag):
                return new, True
            time.sleep(random.uniform(0, 0.02 * (attempt + 1)))  # back off, de-synchronise
        raise ContendedError(f"{self.uri(key)}: still contended after {max_attempts} attempts")

    def delete(self, key: str) -> None:
        """Remove one object; a key that is already gone is fine (idempotent reruns)."""
        with suppress(FileNotFoundError):
            self.fs.rm_file(self.path(key))

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """A process-wide exclusive lock for read-modify-write of one key (local stores)."""
        if not self.is_local:
            yield
            return
        import fcntl

        lock_path = self.path(key) + ".lock"
        os.makedirs(os.path.dirname(lock_path), exist_ok=True)
        with open(lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def lost_race(err: BaseException) -> bool:
    """A conditional PUT that did not apply (`LOST_RACE_CODES`), told by the S3 error code
    or, without one, the HTTP status 412: never by the wording of a message."""
    cause = err if hasattr(err, "response") else err.__cause__
    response: dict[str, Any] = getattr(cause, "response", None) or {}
    code = response.get("Error", {}).get("Code")
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in LOST_RACE_CODES if code else status == 412


def _checked_key(key: str) -> str:
    """A relative key without '.'/'..' segments: nothing can address outside the root."""
    key = key.lstrip("/")
    if any(part in (".", "..") for part in key.split("/")) or "\\" in key or "\x00" in key:
        raise UnsafeKeyError(f"store key {key[:200]!r} is not allowed ('.', '..', '\\' or NUL)")
    return key


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def _is_temporary(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return ".tmp-" in name or name.endswith(".lock")


def merge_options(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` wins, one level deep for s3fs's nested client_kwargs / config_kwargs."""
    merged = {**base, **override}
    for nested in ("client_kwargs", "config_kwargs"):
        if nested in base and nested in override:
            merged[nested] = {**base[nested], **override[nested]}
    return merged


def s3_options_from_block(name: str) -> dict[str, Any]:
    """s3fs options from a prefect-aws `AwsCredentials` block: the Prefect way to hold S3
    credentials (encrypted in Prefect's database, editable in the UI) instead of the environment.

    The block's boto3 session resolves what it holds (static keys, a profile, an assumed role);
    its endpoint and region come along. Errors name the block, never a credential.
    """
    from prefect_aws import AwsCredentials

    try:
        block = AwsCredentials.load(name)
    except ValueError as err:
        raise StoreError(f"AwsCredentials block {name!r} not found: {err}") from None
    credentials = block.get_boto3_session().get_credentials()
    if credentials is None:
        raise StoreError(f"AwsCredentials block {name!r} resolves to no credentials")
    frozen = credentials.get_frozen_credentials()
    options: dict[str, Any] = {"key": frozen.access_key, "secret": frozen.secret_key}
    if frozen.token:
        options["token"] = frozen.token
    client: dict[str, Any] = {}
    if block.region_name:
        client["region_name"] = block.region_name
    params = block.aws_client_parameters
    if params.endpoint_url:
        client["endpoint_url"] = str(params.endpoint_url)
    if params.verify is not None:  # False, or a CA bundle's path
        client["verify"] = params.verify if isinstance(params.verify, bool) else str(params.verify)
    if client:
        options["client_kwargs"] = client
    return options


def _s3_options_from_env() -> dict[str, Any]:
    """Endpoint for S3-compatible stores (MinIO, moto) from NIGHTOWL_S3_ENDPOINT_URL."""
    endpoint = os.environ.get("NIGHTOWL_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    # botocore's "standard" retry mode retries throttling and 5xx with backoff,
    # on top of s3fs's own retries of connection errors. SigV4 explicitly: botocore
    # otherwise presigns URLs with SigV2 here, which newer AWS regions refuse.
    options: dict[str, Any] = {"config_kwargs": {"retries": {"max_attempts": 6, "mode": "standard"},
                                                 "signature_version": "s3v4"}}
    if endpoint:
        options["client_kwargs"] = {"endpoint_url": endpoint}
    return options
