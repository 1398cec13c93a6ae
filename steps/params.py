"""The workflow's parameters: the seed's ten plus the science settings, validated up front."""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PB_ID = re.compile(r"^[A-Za-z0-9\-]{1,64}$")
RFC1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
HOUR_ANGLE_LIMIT_DEG = 30.0  # the seed observes HA -30 deg .. +30 deg


class ParamsError(ValueError):
    """Invalid parameters; the message names each field, its value and the allowed range."""


class Params(BaseModel):
    """Parameters of one batch-imaging run (a processing block's ``parameters``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # -- the seed's contract ------------------------------------------------------------
    n_workers: int = Field(2, ge=1, le=256, description="Number of Dask workers")
    freq_min: float = Field(0.9e8, ge=50e6, le=350e6, description="Minimum frequency (Hz)")
    freq_max: float = Field(1.1e8, ge=50e6, le=350e6, description="Maximum frequency (Hz)")
    nfreqwin: int = Field(8, ge=1, le=1024, description="Number of frequency windows")
    ntimes: int = Field(5, ge=1, le=1440, description="Number of time samples over HA -30..+30 deg")
    rmax: float = Field(750.0, gt=0, le=100_000, description="Maximum station distance (m)")
    ra: float = Field(0.0, ge=0, lt=360, description="Right ascension of the phase centre (deg)")
    dec: float = Field(-30.0, ge=-90, le=90, description="Declination of the phase centre (deg)")
    buffer_vis: str = Field("", description="Visibility buffer (default buff-<pb_id>-vis)")
    buffer_img: str = Field("", description="Image buffer (default buff-<pb_id>-img)")

    # -- identity and services --------------------------------------------------------
    pb_id: str = Field("pb-local-00000000-00000", description="Processing block id")
    config_db: str = Field(
        "", description="Configuration DB: etcd://HOST:PORT, a path, or empty for the default"
    )

    # -- science ----------------------------------------------------------------------
    configuration: Literal["ska1-low", "lowbd2"] = Field(
        "ska1-low", description="Array layout: real SKA1-Low (AA4) or RASCIL's LOWBD2"
    )
    flux_limit: float = Field(3.0, ge=0, description="GLEAM sources brighter than this (Jy)")
    phase_error: float = Field(1.0, ge=0, le=10, description="Station phase error sigma (rad)")
    seed: int = Field(180555, ge=0, lt=2**63, description="Random seed of the corruption")
    npixel: int = Field(1024, ge=32, le=16384, description="Image size (pixels, even)")
    cellsize: float = Field(0.0005, gt=0, le=0.05, description="Pixel size (rad)")
    epsilon: float = Field(1e-6, ge=1e-12, le=1e-2, description="Gridder accuracy")
    niter: int = Field(1000, ge=0, le=1_000_000, description="CLEAN iterations per major cycle")
    nmajor: int = Field(5, ge=1, le=50, description="Major cycles")
    gain: float = Field(0.25, gt=0, le=1, description="CLEAN loop gain")
    threshold: float = Field(0.1, ge=0, description="Absolute CLEAN threshold (Jy)")
    fractional_threshold: float = Field(
        0.1, ge=0, lt=1, description="CLEAN threshold relative to the peak"
    )
    solver_niter: int = Field(50, ge=1, le=1000, description="Gain solver iterations")
    solver_tol: float = Field(1e-10, gt=0, le=1e-2, description="Gain solver tolerance")

    @field_validator("pb_id")
    @classmethod
    def _pb_id(cls, value: str) -> str:
        if not PB_ID.match(value):
            raise ValueError("must match ^[A-Za-z0-9-]{1,64}$ (letters, digits and '-')")
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_buffers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            pb_id = data.get("pb_id") or cls.model_fields["pb_id"].default
            for name, suffix in (("buffer_vis", "vis"), ("buffer_img", "img")):
                if not data.get(name) and isinstance(pb_id, str):
                    data = {**data, name: f"buff-{pb_id}-{suffix}"}
        return data

    @field_validator("buffer_vis", "buffer_img")
    @classmethod
    def _buffer_name(cls, value: str) -> str:
        if not RFC1123_LABEL.match(value):
            raise ValueError(
                "must be a Kubernetes PVC name (RFC 1123 label: 1-63 lower-case letters, "
                "digits or '-', starting and ending with a letter or digit)"
            )
        return value

    @field_validator("npixel")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError("must be even (32..16384)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        if self.freq_max < self.freq_min:
            raise _field_error("freq_max", self.freq_max, f"must be >= freq_min ({self.freq_min})")
        if self.nfreqwin > 1 and self.freq_max == self.freq_min:
            raise _field_error("freq_max", self.freq_max, "must exceed freq_min when nfreqwin > 1")
        if self.buffer_vis == self.buffer_img:
            raise _field_error("buffer_img", self.buffer_img, "must differ from buffer_vis")
        highest = highest_declination()
        if self.dec >= highest:
            raise _field_error(
                "dec",
                self.dec,
                f"is below the horizon of SKA1-Low during HA "
                f"-{HOUR_ANGLE_LIMIT_DEG:g}..+{HOUR_ANGLE_LIMIT_DEG:g} deg; "
                f"allowed -90 <= dec < {highest:.2f}",
            )
        nstations = station_count(self.configuration, self.rmax)
        if nstations < 2:
            raise _field_error(
                "rmax",
                self.rmax,
                f"selects {nstations} {self.configuration} station(s); at least 2 are needed "
                f"(rmax >= {minimum_rmax(self.configuration):.1f} m)",
            )
        return self

    def frequencies(self) -> list[float]:
        """Centre frequency of each window (Hz): linspace(freq_min, freq_max, nfreqwin)."""
        if self.nfreqwin == 1:
            return [self.freq_min]
        step = (self.freq_max - self.freq_min) / (self.nfreqwin - 1)
        return [self.freq_min + i * step for i in range(self.nfreqwin)]

    def channel_width(self) -> float:
        """Channel bandwidth (Hz): the window spacing, or 1 % of the frequency for one window."""
        if self.nfreqwin == 1:
            return 0.01 * self.freq_min
        return (self.freq_max - self.freq_min) / (self.nfreqwin - 1)

    def hour_angles_deg(self) -> list[float]:
        """Hour angles of the samples (deg): linspace(-30, +30, ntimes)."""
        if self.ntimes == 1:
            return [0.0]
        step = 2 * HOUR_ANGLE_LIMIT_DEG / (self.ntimes - 1)
        return [-HOUR_ANGLE_LIMIT_DEG + i * step for i in range(self.ntimes)]

    def as_strings(self) -> dict[str, str]:
        """Every field as the string an Argo parameter carries (JSON for non-strings)."""
        return {
            name: value if isinstance(value, str) else json.dumps(value)
            for name, value in self.model_dump().items()
        }


def _field_error(field: str, value: Any, message: str) -> ValueError:
    return ValueError(f"{field} = {value!r}: {message}")


def _describe(error: dict[str, Any]) -> str:
    location = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if not location:  # raised by the model validator: the message names the field itself
        return message
    if error["type"] == "extra_forbidden":
        return f"{location}: unknown parameter (allowed: {', '.join(Params.model_fields)})"
    return f"{location} = {error.get('input')!r}: {message}"


def parse(data: dict[str, Any]) -> Params:
    """Validate a parameter mapping; raise ParamsError with one line per problem."""
    if not isinstance(data, dict):
        raise ParamsError(f"parameters must be a JSON object, not {type(data).__name__}")
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        raise ParamsError("\n".join(_describe(e) for e in exc.errors())) from None


def parse_strings(data: dict[str, str]) -> Params:
    """Validate parameters given as strings (Argo parameters, CLI flags)."""
    return parse(decode_strings(data))


def decode_strings(data: dict[str, str]) -> dict[str, Any]:
    """Decode string values of non-string fields as JSON (``8``, ``1e8``, ``[0, 3]``)."""
    decoded: dict[str, Any] = {}
    for name, text in data.items():
        field = Params.model_fields.get(name)
        if field is None or field.annotation is str:
            decoded[name] = text
            continue
        try:
            decoded[name] = json.loads(text)
        except json.JSONDecodeError:
            decoded[name] = text
    return decoded


def load(path: str | Path, **overrides: Any) -> Params:
    """Read a JSON parameter file (duplicate keys are an error) and apply overrides."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ParamsError(f"cannot read parameter file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ParamsError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    except ValueError as exc:
        raise ParamsError(f"{path}: {exc}") from None
    if isinstance(data, dict):
        data = {**data, **overrides}
    return parse(data)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise ValueError(f"duplicate key(s): {', '.join(duplicates)}")
    return dict(pairs)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


def schema() -> dict[str, Any]:
    """JSON Schema of the parameters."""
    return Params.model_json_schema()


@lru_cache(maxsize=1)
def highest_declination() -> float:
    """Declination (deg) above which the source sets during HA -30..+30 deg at SKA1-Low.

    The lowest elevation over that range is reached at |HA| = 30 deg; south of that limit
    the phase centre stays above the horizon (SKA1-Low is at latitude -26.8 deg).
    """
    from steps.science.layout import load_stations

    lat = math.radians(load_stations("ska1-low").lat_deg)
    ha = math.radians(HOUR_ANGLE_LIMIT_DEG)
    # sin(el) = sin(lat) sin(dec) + cos(lat) cos(dec) cos(ha) = 0  =>  tan(dec) = -cos(ha)/tan(lat)
    return math.degrees(math.atan(-math.cos(ha) / math.tan(lat)))


@lru_cache(maxsize=16)
def station_count(configuration: str, rmax: float) -> int:
    """Number of stations of a layout within rmax."""
    from steps.science.layout import load_stations, select_within

    return len(select_within(load_stations(configuration), rmax).names)


@lru_cache(maxsize=4)
def minimum_rmax(configuration: str) -> float:
    """Smallest rmax (m) that selects two stations, found by bisection on the count."""
    lo, hi = 0.0, 100_000.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if station_count(configuration, mid) < 2 else (lo, mid)
    return hi
