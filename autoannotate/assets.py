"""Where ultralytics' model assets are published, for "download it by hand" advice in offline errors."""

from __future__ import annotations

import inspect

_DEFAULT_REPO = "ultralytics/assets"
_DEFAULT_RELEASE = "v8.4.0"


def asset_url(name: str) -> str:
    """The ultralytics assets release URL of ``name``, release tag taken from ultralytics' own download default."""
    repo, release = _DEFAULT_REPO, _DEFAULT_RELEASE
    try:
        from ultralytics.utils import downloads

        repo = str(getattr(downloads, "GITHUB_ASSETS_REPO", repo))
        default = inspect.signature(downloads.attempt_download_asset).parameters["release"].default
        if isinstance(default, str) and default:
            release = default
    except (ImportError, AttributeError, KeyError, TypeError, ValueError):
        pass  # the URL is advice in an error message: the fallback form above is still a valid address
    return f"https://github.com/{repo}/releases/download/{release}/{name}"
