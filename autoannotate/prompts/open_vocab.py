"""The open-vocabulary prompt source: YOLOE or YOLO-World with the run's own classes.

The classes come from one of: text prompts (``--prompts``/``--prompts-file``, embedded by the detector's own text
encoder), visual exemplars (``--exemplars`` with ``--names``, YOLOE only), or saved class embeddings
(``--prompt-embeddings``, ultralytics' ``.npz`` format). Class ids follow the prompts' order and data.yaml lists
the prompts as names. The embeddings computed here are handed to the job, which saves them in the output dir
(``embeddings_file.EMBEDDINGS_NAME``) so that offline machines and cluster workers can load them instead.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from autoannotate.config import DEFAULT_OPEN_VOCAB_DETECTOR, check_prompts, read_small_text
from autoannotate.errors import ModelError
from autoannotate.prompts.base import resolve_classes
from autoannotate.prompts.embeddings_file import PromptEmbeddings, check_matches, model_id, read_npz, to_npz_bytes
from autoannotate.prompts.yolo import Detector, Letterboxed, detect_settings
from autoannotate.types import Detections

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import PurePosixPath

    from autoannotate.config import RunSettings

MAX_PROMPTS_FILE_BYTES = 1024 * 1024


class OpenVocabDetector:
    """A prompt source (``prompts.base.PromptSource``): a YOLOE or YOLO-World detector whose classes were set from
    prompts. ``prompt_record``: what set them (for the manifest, the ``--json`` summary and the resume
    fingerprint); ``embeddings``: the class embeddings computed by this run (None when they were loaded from a
    file), which the job saves."""

    def __init__(self, detector: Detector, prompt_record: dict[str, Any], embeddings: PromptEmbeddings | None) -> None:
        self.detector = detector
        self.prompt_record = prompt_record
        self.embeddings = embeddings

    @property
    def names(self) -> dict[int, str]:
        return self.detector.names

    @property
    def class_ids(self) -> tuple[int, ...] | None:
        return self.detector.class_ids

    @property
    def weights_path(self) -> str | None:
        return self.detector.weights_path

    @property
    def gives_masks(self) -> bool:
        """Whether ``boxes`` hands over the detector's own masks (``--sam-model none`` with a ``-seg`` model)."""
        return self.detector.gives_masks

    def embeddings_npz(self) -> bytes | None:
        """The computed embeddings as ``.npz`` bytes (ultralytics' format), or None when loaded from a file."""
        return to_npz_bytes(self.embeddings) if self.embeddings is not None else None

    def prepare(self, image_bgr: np.ndarray) -> np.ndarray | Letterboxed:
        return self.detector.prepare(image_bgr)

    def boxes(
        self, images_bgr: Sequence[np.ndarray | Letterboxed], rel_paths: Sequence[PurePosixPath]
    ) -> list[Detections]:
        return self.detector.detect(images_bgr)


def read_prompts_file(path_text: str) -> tuple[str, ...]:
    """One prompt per line of a UTF-8 text file; blank lines and lines starting with ``#`` are skipped."""
    text = read_small_text(
        Path(path_text).expanduser(),
        MAX_PROMPTS_FILE_BYTES,
        f"--prompts-file {path_text!r}",
        "a UTF-8 text file, one prompt a line",
        encoding="utf-8-sig",
    )
    lines = [line.strip() for line in text.splitlines()]
    return check_prompts([line for line in lines if line and not line.startswith("#")], "--prompts-file")


def _kind_of(detector: Detector, det_model: str, exemplars: bool) -> str:
    """``"yoloe"`` or ``"world"``; ModelError (one line) for a closed-set model, or YOLO-World with exemplars."""
    from ultralytics import YOLOE, YOLOWorld

    model = detector.model
    if isinstance(model, YOLOE) and hasattr(model.model, "set_classes"):
        return "yoloe"
    if isinstance(model, YOLOWorld) and hasattr(model.model, "txt_feats"):
        if exemplars:
            raise ModelError(
                f"--exemplars needs YOLOE's visual-prompt encoder; {det_model!r} is YOLO-World (text only): pass a"
                f" YOLOE checkpoint, e.g. --det-model {DEFAULT_OPEN_VOCAB_DETECTOR}"
            )
        return "world"
    raise ModelError(
        f"{det_model!r} has a fixed set of classes, so prompts cannot set them; pass an open-vocabulary .pt"
        f" (YOLOE or YOLO-World), or drop --det-model to use {DEFAULT_OPEN_VOCAB_DETECTOR}"
    )


def _embedding_dim(kind: str, model: Any) -> int:
    if kind == "yoloe":
        return int(model.model[-1].embed)
    return int(model.txt_feats.shape[-1])


def _set_classes(kind: str, yolo: Any, names: list[str], vectors: torch.Tensor) -> None:
    """Make ``names`` the model's classes, with ``vectors`` ``(1, N, D)`` their embeddings."""
    device = next(yolo.model.parameters()).device
    vectors = vectors.to(device=device, dtype=torch.float32)
    if kind == "yoloe":
        yolo.set_classes(names, vectors)
        return
    # YOLO-World: what WorldModel.set_classes stores, with embeddings given instead of recomputed
    yolo.model.txt_feats = vectors
    yolo.model.model[-1].nc = len(names)
    yolo.model.names = dict(enumerate(names))
    yolo.predictor = None


def embeddings_sha256(names: Sequence[str], vectors: np.ndarray) -> str:
    """A digest of the classes as the detector sees them: their names and embeddings, the embeddings rounded to
    1e-4 so that float noise between machines does not count. The same prompts give the same digest whether
    embedded by the text encoder now or loaded from the file an earlier run saved, so a rerun from the file skips
    what that run labelled; a changed word or exemplar changes it."""
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode("utf-8") + b"\0")
    rounded = np.round(np.asarray(vectors, np.float64), 4) + 0.0  # + 0.0: -0.0 and 0.0 hash alike
    digest.update(np.ascontiguousarray(rounded).tobytes())
    return digest.hexdigest()


def build_open_vocab(settings: RunSettings, device: torch.device) -> OpenVocabDetector:
    """The ``--det-model`` open-vocabulary detector on ``device`` with the run's classes set and ``--classes``
    resolved against them. Raises ConfigError, ModelError (one line each)."""
    from autoannotate.review.labels import read_names

    p = settings.prompts
    prompts = p.prompts if p.prompts is not None else read_prompts_file(p.prompts_file) if p.prompts_file else None
    names_map = read_names(Path(p.names).expanduser()) if p.exemplars is not None and p.names else None
    exemplars = None
    if p.exemplars is not None:
        from autoannotate.prompts.exemplars import read_exemplars

        assert names_map is not None  # PromptSettings requires --names with --exemplars
        exemplars = read_exemplars(p.exemplars, names_map)  # checked before the detector loads: fails fast
    detector = Detector.from_weights(p.det_model, device)
    kind = _kind_of(detector, p.det_model, exemplars is not None)
    yolo: Any = detector.model
    bound_to = model_id(detector.weights_path or p.det_model)
    record: dict[str, Any]
    computed: PromptEmbeddings | None = None
    if p.prompt_embeddings is not None:
        path = Path(p.prompt_embeddings).expanduser()
        loaded = read_npz(path)
        check_matches(loaded, p.prompt_embeddings, bound_to, _embedding_dim(kind, yolo.model), prompts)
        names = list(loaded.names)
        vectors = torch.from_numpy(loaded.vectors.copy())
        record = {"source": "embeddings", "names": names, "prompt_embeddings_sha256": loaded.file_sha256}
    elif exemplars is not None:
        from autoannotate.prompts.exemplars import exemplars_sha256, visual_embeddings

        assert names_map is not None
        names = [names_map[c] for c in sorted(names_map)]
        check_prompts(names, "--names")  # class names must be distinct to be classes of one model
        vectors = visual_embeddings(yolo, exemplars, names_map, p.imgsz, device)
        record = {"source": "exemplars", "names": names, "exemplars_sha256": exemplars_sha256(exemplars, names_map)}
    else:
        from autoannotate.prompts.text_encoder import encoder_file, text_embeddings

        assert prompts is not None  # PromptSource entry: some class source is set
        names = list(prompts)
        vectors = text_embeddings(kind, yolo, names, Path(p.det_model).name)
        record = {"source": "text", "names": names, "text_encoder": encoder_file(kind, yolo.model)}
    array = vectors.detach().cpu().float().numpy()
    record["embeddings_sha256"] = embeddings_sha256(names, array)
    if p.prompt_embeddings is None:
        computed = PromptEmbeddings(tuple(names), array, bound_to)
    _set_classes(kind, yolo, names, vectors)
    detector = detector.with_names(dict(enumerate(names)))
    class_ids = resolve_classes(p.classes, detector.names, "--prompts")
    return OpenVocabDetector(detector.with_settings(detect_settings(settings, class_ids)), record, computed)
