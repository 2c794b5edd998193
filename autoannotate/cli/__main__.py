"""``python -m autoannotate.cli``: the same as the ``autoannotate`` console script."""

from __future__ import annotations

from autoannotate.cli import main

main()
