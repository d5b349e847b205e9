"""``attnzoo push-to-hub``: a training checkpoint -> a Hugging Face Hub model repository timm loads.

The upload is the folder :func:`~attnzoo.tools.export.export_checkpoint` writes (``model.safetensors``,
``config.json`` with the class names, ``README.md`` the model card), so after ``import attnzoo``::

    timm.create_model("hf-hub:ORG/NAME", pretrained=True)

builds the architecture, loads the weights and carries the preprocessing and ``pretrained_cfg["label_names"]``.
timm's own ``push_to_hf_hub`` is not used: it writes a card claiming Apache-2.0 whatever the weights' license and
keeps an older card in place.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .export import export_checkpoint

__all__ = ["check_repo_id", "push_to_hub"]

# the Hub's rule for each half of ORG/NAME (huggingface_hub.utils.validate_repo_id checks the rest)
_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?")


def check_repo_id(repo_id: str) -> tuple[str, str]:
    """``(org, name)`` of ``"ORG/NAME"``; ``ValueError`` naming ``repo_id`` otherwise.

    The organisation (or user) is required: without it the Hub would pick the token's user, and the URL the card
    shows and the one returned could differ from the repository written.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise ValueError(f"repo_id: expected 'ORG/NAME' (one slash), got {repo_id!r}")
    org, name = repo_id.split("/")
    for part, what in ((org, "ORG"), (name, "NAME")):
        if not _PART.fullmatch(part):
            raise ValueError(
                f"repo_id: {what} {part!r} of {repo_id!r} must be letters, digits, '-', '_' or '.', "
                "starting with a letter or digit"
            )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"repo_id: {error}") from error
    return org, name


def push_to_hub(
    checkpoint: str | Path,
    repo_id: str,
    *,
    ema: bool = False,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    api: Any = None,
    commit_message: str | None = None,
    datasets: Sequence[str] = (),
) -> str:
    """Export ``checkpoint`` to a temporary folder and upload it to the model repo ``repo_id``; returns its URL.

    The repo is created if missing (``exist_ok``; ``private`` applies only then), ``revision`` names a branch
    (created from ``main`` if missing), and every file is uploaded in one commit, the model card included (a
    card edited on the Hub is replaced: the checkpoint's facts win; the Hub keeps the history). ``api`` is a
    ``huggingface_hub.HfApi`` (default: one with ``token``), injectable for tests.
    """
    _, name = check_repo_id(repo_id)
    if api is None:
        from huggingface_hub import HfApi

        import attnzoo

        api = HfApi(token=token, library_name="attnzoo", library_version=attnzoo.__version__)
    with tempfile.TemporaryDirectory(prefix="attnzoo-hub-") as tmp:
        # export first: a checkpoint that cannot be read must not leave an empty repository behind
        folder = export_checkpoint(
            checkpoint, Path(tmp) / name, ema=ema, model_name=name, repo_id=repo_id, datasets=datasets
        )
        repo_url = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        if revision is not None and revision != "main":
            api.create_branch(repo_id=repo_id, repo_type="model", branch=revision, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            repo_type="model",
            folder_path=folder,
            revision=revision,
            commit_message=commit_message or f"attnzoo export of {Path(checkpoint).name}" + (" (EMA)" if ema else ""),
        )
    url = str(repo_url).rstrip("/")
    return f"{url}/tree/{revision}" if revision not in (None, "main") else url
