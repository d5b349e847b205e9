"""Downloaded weights arrive whole, in bounded time, and are hash-checked: a file that changed is an error naming it.

Every URL download of this package goes through :func:`verified_download`: the registered weights of a model
(a pretrained tag), a ``pretrained_cfg_overlay`` URL (both through :func:`build_model_with_cfg`) and
``ClassificationTask(pretrained_file=URL)``. A download

- gives up on a silent server: each connect and read waits at most ``ATTNZOO_DOWNLOAD_TIMEOUT`` seconds (default
  30), and a timeout, a dropped connection, a 5xx answer or fewer bytes than the ``Content-Length`` is retried
  ``ATTNZOO_DOWNLOAD_RETRIES`` times (default 3) with a doubling wait (1 s, 2 s, 4 s);
- is written to a temporary file in the cache folder and moved into place only once it is complete, loads as
  weights (the way timm will load it) and passes the hash check, so a failed download leaves nothing behind;
- is cached under a name made from the whole URL (:func:`cache_name`), so two URLs that end in the same file name
  never share a file, and handed to timm as that local file.

The authors' release files cannot be reached from where this package is built, so no hash is shipped for them
(:data:`SHA256` holds the ones that are known). Every other URL is trusted on first use: the first download that
loads as weights has its SHA-256 recorded next to torch's download cache (``<torch hub dir>/attnzoo-sha256.json``,
read and written under a lock on ``attnzoo-sha256.json.lock``, so concurrent processes never lose a record), and
every later load verifies the cached file against it. timm's own hash check is off and its URLs carry no hash;
when it is turned on (``timm.models.set_pretrained_check_hash``), a hash prefix in the URL's file name is checked
too, as ``torch.hub`` does.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import inspect
import json
import os
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import torch
from timm.models import _builder as timm_builder
from timm.models import build_model_with_cfg as timm_build_model_with_cfg
from timm.models._builder import _resolve_pretrained_source, resolve_pretrained_cfg
from tqdm import tqdm

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks; the record is still replaced atomically
    fcntl = None

SHA256: dict[str, str] = {}
"""Known SHA-256 of release files by URL (none yet: the authors' files were out of reach when this was written)."""

RECORD_NAME = "attnzoo-sha256.json"
LOCK_NAME = RECORD_NAME + ".lock"

TIMEOUT_ENV = "ATTNZOO_DOWNLOAD_TIMEOUT"
RETRIES_ENV = "ATTNZOO_DOWNLOAD_RETRIES"
DEFAULT_TIMEOUT_S = 30.0  # per connect and per read: long enough for a slow mirror, short enough to notice a dead one
DEFAULT_RETRIES = 3
BACKOFF_S = 1.0  # the wait before the first retry; it doubles for each further one

_CHUNK = 1 << 16


class WeightsHashError(ValueError):
    """A downloaded weights file does not have the SHA-256 it had (or is registered with)."""


class WeightsDownloadError(OSError):
    """A weights URL could not be downloaded whole (after the retries)."""


class WeightsLoadError(ValueError):
    """A downloaded file does not load as weights (an error page, a truncated or foreign file)."""


class _Retryable(Exception):
    """One failed attempt worth repeating (timeout, dropped connection, 5xx, short body)."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- the record of first-use hashes ---------------------------------------------------------------------------


def _records_path(cache_dir: Path) -> Path:
    return cache_dir / RECORD_NAME


def _read_records(cache_dir: Path) -> dict[str, str]:
    path = _records_path(cache_dir)
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_records(cache_dir: Path, records: dict[str, str]) -> None:
    """Replace the record file whole (a reader never sees half of it)."""
    path = _records_path(cache_dir)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=cache_dir)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(json.dumps(records, indent=1, sort_keys=True) + "\n")
        os.replace(temp, path)
    finally:
        Path(temp).unlink(missing_ok=True)


@contextlib.contextmanager
def _records_locked(cache_dir: Path) -> Iterator[None]:
    """Hold the record's lock file, so that two processes' read-modify-write of the record never interleave."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / LOCK_NAME, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


# --- where a URL is cached ------------------------------------------------------------------------------------


def _url_file_name(url: str) -> str:
    """The file name the URL's path ends in ('' for share links such as ``.../f/<id>/?dl=1``)."""
    return os.path.basename(urlparse(url).path)


def cache_name(url: str) -> str:
    """The cached file's name: a hash of the whole URL (two URLs never share a file), then a readable part.

    The readable part is the URL's file name (its suffix tells timm a ``.safetensors`` file), else, for share links
    whose path names no file, its host and path parts joined, plus ``.pth``.
    """
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    readable = _url_file_name(url)
    if not readable:
        parsed = urlparse(url)
        readable = "-".join([parsed.hostname or "download", *filter(None, parsed.path.split("/"))]) + ".pth"
    return f"{key}-{readable}"


def _record_dir(cache_dir: str | Path | None) -> Path:
    """Where the record lives: timm's ``cache_dir`` when given, else torch's hub folder."""
    return Path(cache_dir) if cache_dir is not None else Path(torch.hub.get_dir())


def cache_path(url: str, cache_dir: str | Path | None = None) -> Path:
    """The file :func:`verified_download` keeps ``url`` in: in ``cache_dir``, else ``<torch hub dir>/checkpoints``."""
    folder = Path(cache_dir) if cache_dir is not None else _record_dir(None) / "checkpoints"
    return folder / cache_name(url)


# --- one bounded, all-or-nothing download ---------------------------------------------------------------------


def _setting(argument: str, value, env: str, default, kind: type):
    """``value`` if given, else the environment variable ``env``, else ``default``; refused unless positive (a
    timeout) or non-negative (retries), naming ``argument`` or the variable it came from."""
    source = argument
    if value is None:
        text = os.environ.get(env, "").strip()
        if not text:
            return default
        source = env
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(
                f"{env}: expected {'a number of seconds' if kind is float else 'an integer'}, got {text!r}"
            ) from None
    if value < 0 or (kind is float and value == 0):
        raise ValueError(f"{source}: must be {'> 0' if kind is float else '>= 0'}, got {value}")
    return kind(value)


def download_settings(timeout: float | None = None, retries: int | None = None) -> tuple[float, int]:
    """The (seconds per connect or read, retries) a download uses: the arguments, else the environment
    (``ATTNZOO_DOWNLOAD_TIMEOUT``, ``ATTNZOO_DOWNLOAD_RETRIES``), else 30 s and 3."""
    return (
        _setting("timeout", timeout, TIMEOUT_ENV, DEFAULT_TIMEOUT_S, float),
        _setting("retries", retries, RETRIES_ENV, DEFAULT_RETRIES, int),
    )


def _fetch_once(url: str, out, timeout: float, progress: bool, label: str) -> None:
    """One attempt: stream ``url`` into the open file ``out``; ``_Retryable`` for failures a retry may cure."""
    request = urllib.request.Request(url, headers={"User-Agent": "attnzoo"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length", "")
            expected = int(length) if length.isdigit() else None
            received = 0
            with tqdm(
                total=expected, disable=not progress, unit="B", unit_scale=True, unit_divisor=1024, desc=label
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as error:
        error.close()
        if error.code >= 500 or error.code in (408, 429):
            raise _Retryable(f"HTTP {error.code} {error.reason}") from None
        raise WeightsDownloadError(f"download of {url} failed: HTTP {error.code} {error.reason}") from None
    except (OSError, http.client.HTTPException) as error:  # URLError, timeouts, resets, IncompleteRead
        reason = getattr(error, "reason", None) or error
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            raise _Retryable(f"no answer within {timeout:g} s ({TIMEOUT_ENV})") from None
        raise _Retryable(str(reason) or type(reason).__name__) from None
    if expected is not None and received != expected:
        raise _Retryable(f"the server sent {received} of the {expected} bytes of its Content-Length")


def _download(url: str, temp: Path, timeout: float, retries: int, progress: bool, label: str) -> None:
    """Fetch ``url`` into ``temp`` whole, retrying with a doubling wait; ``WeightsDownloadError`` when all fail."""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(BACKOFF_S * 2 ** (attempt - 1))
        try:
            with open(temp, "wb") as out:  # each attempt starts from an empty file
                _fetch_once(url, out, timeout, progress, label)
            return
        except _Retryable as error:
            reason = str(error)
    raise WeightsDownloadError(
        f"download of {url} failed after {retries + 1} attempts ({RETRIES_ENV}={retries}): {reason}"
    )


def _check_name_hash(url: str, path: Path) -> None:
    """With timm's hash check on, a hash prefix in the URL's file name must start the SHA-256 (torch.hub's rule)."""
    prefix = torch.hub.HASH_REGEX.search(_url_file_name(url)) if timm_builder._CHECK_HASH else None
    digest = sha256_of(path) if prefix else ""
    if prefix and not digest.startswith(prefix.group(1)):
        raise RuntimeError(
            f'invalid hash value (expected "{prefix.group(1)}", got "{digest}") for {url}; nothing was cached'
        )


def _check_loads(path: Path, safetensors: bool, url: str, cached: bool = False) -> None:
    """Load ``path`` as timm will (safetensors by the name's suffix, else ``torch.load(weights_only=True)``), so
    that an error page or a foreign file is never cached or trusted. ``cached``: ``path`` is the cache file."""
    try:
        if safetensors:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    handle.get_slice(key)
        else:
            torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as error:
        what = "safetensors" if safetensors else "torch.load(weights_only=True)"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if cached:
            where, outcome = f"cached file {path} (from {url})", "delete it to download it again"
        else:
            where, outcome = f"download of {url}", "nothing was cached or recorded"
        raise WeightsLoadError(f"{where} does not load as weights through {what}: {first_line}; {outcome}") from None


def _mismatch(url: str, file: Path, digest: str, expected: str, records_dir: Path, fresh: bool) -> str:
    """The one-line error of a hash mismatch, with the way out that fits: a cached file is deleted to download it
    again; a fresh download of a recorded URL whose server file changed is trusted by removing its record."""
    registered = url in SHA256
    how = "registered" if registered else "recorded at its first download"
    if not fresh:
        return (
            f"weights file {file} (from {url}) has SHA-256 {digest}, but {expected} was {how}; it changed or is "
            "corrupt: delete it to download it again"
        )
    advice = (
        "it is not the registered release"
        if registered
        else f"the server's file changed: remove its entry from {_records_path(records_dir)} to trust the new one"
    )
    return (
        f"weights downloaded from {url} have SHA-256 {digest}, but {expected} was {how}; {advice} (nothing was cached)"
    )


def _trust(url: str, file: Path, records_dir: Path, install: Path | None = None) -> None:
    """Check ``file`` against the registered or recorded SHA-256 and record it if it is new, under the lock.

    ``install``: the cache path a fresh download (``file``) moves to once it passed; ``None`` for a cached file.
    """
    digest = sha256_of(file)
    with _records_locked(records_dir):
        records = _read_records(records_dir)
        expected = SHA256.get(url) or records.get(url)
        if expected is not None and digest != expected:
            raise WeightsHashError(_mismatch(url, file, digest, expected, records_dir, fresh=install is not None))
        if install is not None:
            os.replace(file, install)
        if url not in records:
            records[url] = digest
            _write_records(records_dir, records)


def verified_download(
    url: str,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    *,
    timeout: float | None = None,
    retries: int | None = None,
) -> Path:
    """The cached file of ``url`` (downloaded first if missing), after checking its SHA-256.

    Checked against :data:`SHA256` when the URL is registered there, else against the hash recorded at its first
    download (recorded now if this is the first, once the file loads as weights). ``timeout`` (seconds per connect
    or read) and ``retries`` default to :func:`download_settings`. See the module doc for the guarantees.
    """
    timeout, retries = download_settings(timeout, retries)
    records_dir = _record_dir(cache_dir)
    path = cache_path(url, cache_dir)
    safetensors = path.name.endswith(".safetensors")
    if path.is_file():
        if SHA256.get(url) is None and url not in _read_records(records_dir):
            _check_loads(path, safetensors, url, cached=True)  # a cached file nobody vouched for yet
        _trust(url, path, records_dir)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    temp = Path(name)
    try:
        _download(url, temp, timeout, retries, progress, _url_file_name(url) or path.name)
        _check_name_hash(url, temp)
        _check_loads(temp, safetensors, url)
        _trust(url, temp, records_dir, install=path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def build_model_with_cfg(model_cls, variant: str, pretrained: bool = False, **kwargs):
    """timm's ``build_model_with_cfg``, with URL weights downloaded and hash-checked first (see the module doc)."""
    if pretrained:
        cfg = resolve_pretrained_cfg(
            variant,
            pretrained_cfg=kwargs.get("pretrained_cfg"),
            pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"),
        ).to_dict()
        source, location = _resolve_pretrained_source(cfg)
        if source == "url":
            path = verified_download(location, cache_dir=kwargs.get("cache_dir"))
            # timm would look for the URL's file name in its cache and download it itself: give it our file
            kwargs["pretrained_cfg_overlay"] = {**(kwargs.get("pretrained_cfg_overlay") or {}), "file": str(path)}
    return timm_build_model_with_cfg(model_cls, variant, pretrained, **kwargs)


def stage_out_indices(model_cls, kwargs: dict) -> tuple[int, ...]:
    """``features_only``'s default ``out_indices``: every stage the model is built with (timm's Swin rule,
    ``range(len(depths))``), from the ``depths`` keyword or else the class's own default."""
    depths = kwargs.get("depths")
    for cls in model_cls.__mro__:
        if depths is not None:
            break
        param = inspect.signature(cls.__init__).parameters.get("depths")
        if param is not None and param.default is not inspect.Parameter.empty:
            depths = param.default
    if depths is None:
        raise ValueError(f"{model_cls.__name__}: depths is needed to choose features_only's out_indices")
    return tuple(range(len(depths)))
