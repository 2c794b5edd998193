"""The dataset's ``data.yaml``: what ``yolo segment train data=OUT/data.yaml`` reads."""

from __future__ import annotations

from collections.abc import Mapping

import yaml

HEADER = "# Written by autoannotate"


def format_data_yaml(names: Mapping[int, str], train: str, val: str, version: str) -> str:
    """``data.yaml`` text. ``train``/``val`` are relative to the yaml's own directory.

    ``path`` is left out on purpose: ultralytics then takes the yaml's directory as the dataset root, so the
    dataset can be moved or copied as a whole. The header line marks the file as ours (never overwrite others').
    """
    body = yaml.safe_dump(
        {"train": train, "val": val, "nc": len(names), "names": {int(k): str(v) for k, v in sorted(names.items())}},
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
    )
    return f"{HEADER} {version}. Train with: yolo segment train data=<this file>\n{body}"


def is_ours(text: str) -> bool:
    """True when ``text`` is a data.yaml this tool wrote (so it may be replaced)."""
    return text.startswith(HEADER)
