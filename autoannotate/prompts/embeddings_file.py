"""Class embeddings on disk, in ultralytics' prompt-embeddings ``.npz`` format (``YOLOE.save_prompt_embeddings``):
``embeddings`` float32 ``(1, classes, dim)``, ``names`` a 1-D unicode array, ``model`` a unicode scalar naming the
checkpoint they were made with (its file stem without ``-seg``, as ultralytics binds them). YOLO-World embeddings
are written in the same format. Reading checks everything and gives one line per problem; nothing here imports
torch.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoannotate.errors import ConfigError, one_line

#: The name of the embeddings file a prompt run writes in its output dir (per shard: ``prompt_embeddings.<tag>.npz``).
EMBEDDINGS_NAME = "prompt_embeddings.npz"
_KEYS = {"embeddings", "names", "model"}
_NOT_OURS = (
    "not a prompt-embeddings .npz (it must hold exactly embeddings, names and model, as"
    " YOLOE.save_prompt_embeddings writes)"
)
MAX_EMBEDDINGS_BYTES = 512 * 1024 * 1024  # 10,000 classes of 512 float32 is 20 MB: far above any real file


@dataclass(frozen=True)
class PromptEmbeddings:
    """Class embeddings: ``names[i]`` is class ``i``; ``vectors`` float32 ``(1, len(names), dim)``; ``model`` the
    checkpoint id they were made for."""

    names: tuple[str, ...]
    vectors: np.ndarray
    model: str
    file_sha256: str | None = None  # of the file they were read from


def model_id(checkpoint: str | Path) -> str:
    """The id ultralytics binds embeddings to: the checkpoint's file stem, without a ``-seg`` ending."""
    stem = Path(checkpoint).stem
    return stem[:-4] if stem.endswith("-seg") else stem


def to_npz_bytes(embeddings: PromptEmbeddings) -> bytes:
    """The ``.npz`` file's bytes (compressed, as ultralytics writes it)."""
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        embeddings=np.ascontiguousarray(embeddings.vectors, dtype=np.float32),
        names=np.asarray(embeddings.names, dtype=np.str_),
        model=np.asarray(embeddings.model, dtype=np.str_),
    )
    return buffer.getvalue()


def read_npz(path: Path, flag: str = "--prompt-embeddings") -> PromptEmbeddings:
    """Read and check an embeddings file. Raises ConfigError (one line) for a file that is missing, not an npz of
    this format, or holds non-finite or mis-shaped embeddings."""
    shown = str(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise ConfigError(f"{flag} {shown!r} is not a file: pass an .npz of class embeddings")
        if size > MAX_EMBEDDINGS_BYTES:
            raise ConfigError(f"{flag} {shown!r} is over {MAX_EMBEDDINGS_BYTES >> 20} MiB: not an embeddings file")
        raw = path.read_bytes()  # read once: loaded from memory, and hashed for the manifest
        loaded = np.load(io.BytesIO(raw), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a plain .npy array
            raise ConfigError(f"{flag} {shown!r} is {_NOT_OURS}")
        with loaded as data:
            if set(data.files) != _KEYS:
                raise ConfigError(f"{flag} {shown!r} is {_NOT_OURS}")
            vectors, names, model = data["embeddings"], data["names"], data["model"]
    except FileNotFoundError:
        raise ConfigError(f"{flag} {shown!r} does not exist: pass the .npz a prompt run saved") from None
    except ConfigError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ConfigError(f"{flag} {shown!r} is not a readable .npz ({one_line(err, 80)})") from None
    if model.ndim != 0 or model.dtype.kind != "U":
        raise ConfigError(f"{flag} {shown!r}: 'model' must be a string naming the checkpoint")
    if names.ndim != 1 or names.dtype.kind != "U" or len(names) == 0:
        raise ConfigError(f"{flag} {shown!r}: 'names' must be a non-empty list of class names")
    if vectors.dtype != np.float32 or vectors.ndim != 3 or vectors.shape[:2] != (1, len(names)):
        raise ConfigError(
            f"{flag} {shown!r}: 'embeddings' must be float32 of shape (1, {len(names)}, dim), one per name; got"
            f" {vectors.dtype} {tuple(vectors.shape)}"
        )
    if not np.isfinite(vectors).all():
        raise ConfigError(f"{flag} {shown!r}: 'embeddings' holds NaN or infinite values")
    names_tuple = tuple(str(n) for n in names.tolist())
    return PromptEmbeddings(names_tuple, vectors, str(model.item()), hashlib.sha256(raw).hexdigest())


def check_matches(
    embeddings: PromptEmbeddings, path: str, model: str, dim: int, prompts: tuple[str, ...] | None
) -> None:
    """Refuse embeddings made for another checkpoint, another embedding size or (when ``prompts`` are given)
    another prompt list: ConfigError, one line saying which and how to get matching ones."""
    if embeddings.model != model:
        raise ConfigError(
            f"--prompt-embeddings {path!r} was made for model {embeddings.model!r}, not {model!r}; pass the"
            f" --det-model it was made with, or make embeddings for this one (a run with --prompts saves them)"
        )
    if embeddings.vectors.shape[2] != dim:
        raise ConfigError(
            f"--prompt-embeddings {path!r} holds {embeddings.vectors.shape[2]}-dim embeddings; this detector takes"
            f" {dim}: they were made for another architecture"
        )
    if prompts is not None and tuple(prompts) != embeddings.names:
        listed = ",".join(embeddings.names[:6]) + (",..." if len(embeddings.names) > 6 else "")
        raise ConfigError(
            f"--prompt-embeddings {path!r} holds the prompts {listed!r}, not those of --prompts; pass the same"
            " prompts in the same order, or drop --prompts to use the file's"
        )
