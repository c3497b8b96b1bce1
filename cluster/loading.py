"""Loading of cluster profiles by bundled name or YAML path, with readable errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from cluster.profile import PROFILE_KINDS, ClusterProfile

PROFILE_DIRECTORY = Path(__file__).with_name("profiles")
"""Folder of the profiles bundled with the package."""

_PROFILE_ADAPTER: TypeAdapter[ClusterProfile] = TypeAdapter(ClusterProfile)


class ProfileError(ValueError):
    """Raised when a cluster profile cannot be found or fails validation."""


def bundled_profiles() -> list[str]:
    """Return the names of the profiles shipped in ``cluster/profiles/``, sorted."""
    return sorted(path.stem for path in PROFILE_DIRECTORY.glob("*.yaml"))


def _resolve_profile_path(name_or_path: str | Path) -> Path:
    """Return the YAML file of a bundled profile name or of a path.

    A bare file name that is not in the working folder falls back to the
    bundled profile of that file name, e.g. ``slurm-gpu.yaml``.
    """
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.parent != Path("."):
        bundled_file = PROFILE_DIRECTORY / path.name
        if not path.is_file() and path.parent == Path(".") and bundled_file.is_file():
            return bundled_file
        if not path.is_file():
            raise ProfileError(
                f"cluster profile file {str(path)!r} not found; pass an existing YAML "
                f"file or one of the bundled names {bundled_profiles()}"
            )
        return path

    bundled = PROFILE_DIRECTORY / f"{name_or_path}.yaml"
    if not bundled.is_file():
        raise ProfileError(
            f"cluster profile {str(name_or_path)!r} not found; use one of the bundled "
            f"names {bundled_profiles()} or a path to a YAML file"
        )
    return bundled


def _format_validation_error(source: str, error: ValidationError) -> str:
    lines = [f"invalid cluster profile {source}:"]
    for detail in error.errors():
        field = ".".join(str(part) for part in detail["loc"]) or "(top level)"
        value = detail.get("input")
        message = detail["msg"].removeprefix("Value error, ")
        if detail["type"] in ("union_tag_invalid", "union_tag_not_found"):
            field, value = "kind", value.get("kind") if isinstance(value, dict) else None
            message = f"invalid or missing profile kind; set kind to one of {', '.join(PROFILE_KINDS)}"
        elif detail["type"] == "extra_forbidden":
            message += "; remove it or check its spelling against the profile's fields"
        elif detail["type"] == "missing":
            message += "; add it to the profile"
        lines.append(f"  {field} = {value!r}: {message}")
    return "\n".join(lines)


def parse_profile(data: Any, *, source: str = "<mapping>", name: str = "") -> ClusterProfile:
    """Validate a mapping (e.g. the ``cluster:`` section of a job file) into a profile.

    Parameters
    ----------
    data
        Mapping with a ``kind`` key and the fields of that kind.
    source
        Where the mapping came from, quoted in error messages.
    name
        Profile name to use when the mapping sets none.

    Raises
    ------
    ProfileError
        If a field is missing, unknown or invalid; the message names each one,
        its value and the fix.
    """
    if not isinstance(data, dict):
        raise ProfileError(
            f"cluster profile {source} contains a {type(data).__name__}, expected a "
            "mapping with a 'kind' key (local, local-gpu, slurm, kubernetes, address)"
        )
    if name and not data.get("name"):
        data = {**data, "name": name}

    try:
        return _PROFILE_ADAPTER.validate_python(data)
    except ValidationError as error:
        raise ProfileError(_format_validation_error(source, error)) from None


def load_profile(name_or_path: str | Path) -> ClusterProfile:
    """Load a cluster profile by bundled name (``local``, ``slurm-gpu``...) or YAML path.

    Raises
    ------
    ProfileError
        If the profile is not found, is not valid YAML or fails validation.
    """
    path = _resolve_profile_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ProfileError(f"cluster profile {str(path)!r} is not valid YAML: {error}") from None
    return parse_profile(data, source=repr(str(path)), name=path.stem)
