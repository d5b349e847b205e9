"""Downloaded weights are hash-checked: a file that changed since it was first fetched is an error naming it.

The authors' release files cannot be reached from where this package is built, so no hash is shipped for
them (:data:`SHA256` holds the ones that are known). Every other URL is trusted on first use: the first
download's SHA-256 is recorded next to torch's download cache (``<torch hub dir>/attnzoo-sha256.json``) and
every later load verifies the cached file against it. timm's own hash check is off and its URLs carry no
hash; this module downloads into the place timm reads from (with a progress bar) before timm does.
Share links whose path names no file (the Agent authors' ``.../f/<id>/?dl=1``) get a cache name of their
own (:func:`cache_name`) and are handed to timm as a local file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from urllib.parse import urlparse

import torch
from timm.models import _builder as timm_builder
from timm.models import build_model_with_cfg as timm_build_model_with_cfg
from timm.models._builder import _resolve_pretrained_source, resolve_pretrained_cfg

SHA256: dict[str, str] = {}
"""Known SHA-256 of release files by URL (none yet: the authors' files were out of reach when this was written)."""

RECORD_NAME = "attnzoo-sha256.json"


class WeightsHashError(ValueError):
    """A downloaded weights file does not have the SHA-256 it had (or is registered with)."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _records_path(cache_dir: Path) -> Path:
    return cache_dir / RECORD_NAME


def _read_records(cache_dir: Path) -> dict[str, str]:
    path = _records_path(cache_dir)
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_records(cache_dir: Path, records: dict[str, str]) -> None:
    path = _records_path(cache_dir)
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    temp.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
    os.replace(temp, path)


def _url_file_name(url: str) -> str:
    """The file name the URL's path ends in ('' for share links such as ``.../f/<id>/?dl=1``)."""
    return os.path.basename(urlparse(url).path)


def cache_name(url: str) -> str:
    """The cached file's name: the URL's file name, else its host and path parts joined, plus ``.pth``."""
    if _url_file_name(url):
        return _url_file_name(url)
    parsed = urlparse(url)
    return "-".join([parsed.hostname or "download", *filter(None, parsed.path.split("/"))]) + ".pth"


def verified_download(url: str, cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """The cached file of ``url`` (downloaded first if missing), after checking its SHA-256.

    Checked against :data:`SHA256` when the URL is registered there, else against the hash recorded at its
    first download (recorded now if this is the first).
    """
    # where torch.hub.load_state_dict_from_url (timm's loader) looks: <hub dir>/checkpoints, or timm's cache_dir
    hub_dir = Path(cache_dir) if cache_dir is not None else Path(torch.hub.get_dir())
    folder = hub_dir if cache_dir is not None else hub_dir / "checkpoints"
    path = folder / cache_name(url)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        # a temporary file, then a rename; with timm's hash check on, torch.hub's rule (a hash prefix in the name
        # the URL gives; a name of our own carries none)
        named_by_url = bool(_url_file_name(url))
        prefix = torch.hub.HASH_REGEX.search(path.name) if timm_builder._CHECK_HASH and named_by_url else None
        torch.hub.download_url_to_file(url, str(path), prefix.group(1) if prefix else None, progress=progress)
    digest = sha256_of(path)
    records = _read_records(hub_dir)
    expected = SHA256.get(url) or records.get(url)
    if expected is not None and digest != expected:
        raise WeightsHashError(
            f"weights file {path} (from {url}) has SHA-256 {digest}, but {expected} was "
            f"{'registered' if url in SHA256 else 'recorded at its first download'}; it changed or is corrupt: "
            "delete it to download it again"
        )
    if url not in records:
        records[url] = digest
        _write_records(hub_dir, records)
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
            if not _url_file_name(location):  # torch.hub could not name it: give timm the file
                kwargs["pretrained_cfg_overlay"] = {**(kwargs.get("pretrained_cfg_overlay") or {}), "file": str(path)}
    return timm_build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
