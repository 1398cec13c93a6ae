"""The workflow's parameters: the seed's ten plus the science settings, validated up front."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

PB_ID = re.compile(r"^[A-Za-z0-9\-]{1,64}$")
PB_ID_K8S_MAX = 43  # "proc-<pb_id>-dask-scheduler" is a Service name: at most 63
LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"  # an RFC 1123 label (a PVC's name)
RFC1123_LABEL = re.compile(rf"^{LABEL}$")
NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"  # a Kubernetes quantity's number
CPU = rf"^{NUMBER}m?$"  # a CPU quantity
BYTES = rf"^{NUMBER}([eE][0-9]+|[KMGTPE]i?)?$"  # a memory or storage quantity
QUANTITY = re.compile(rf"^({NUMBER})(m|k|Ki|Mi|Gi|Ti|Pi|Ei|M|G|T|P|E|[eE][0-9]+)?$")
SUFFIX = {
    "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip
# a scheduler the steps' Client reaches: tcp://HOST:PORT or HOST:PORT (tcp is Dask's default
# scheme; tls:// would need certificates the steps do not have, ucx:// a package they lack)
SCHEDULER = re.compile(
    r"^(?:tcp://)?(?:[A-Za-z0-9](?:[-A-Za-z0-9.]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):(\d{1,5})$"
)
MIN_MEMORY = "512Mi"  # a step's interpreter, numpy, Dask and xarray alone take ~300 MiB
MIN_BUFFER = "1Mi"  # Kubernetes refuses a PVC of 0 bytes; less holds no run's products
HOUR_ANGLE_LIMIT_DEG = 30.0  # the seed observes HA -30 deg .. +30 deg
_NUMBER_KINDS = {int: "an integer", float: "a number"}  # as errors name them


class ParamsError(ValueError):
    """Invalid parameters; the message names each field, its value and the allowed range."""


class Params(BaseModel):
    """Parameters of one batch-imaging run (a processing block's ``parameters``)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False
    )

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
    sbi_id: str = Field(
        "",
        pattern=r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$",
        description="Scheduling block instance id (a label of the run)",
    )

    # -- Kubernetes (Argo) ------------------------------------------------------------
    buffer_size: str = Field("1Gi", pattern=BYTES, description="Size of each buffer PVC")
    buffer_storage_class: str = Field(
        "standard",
        pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$",
        description="Storage class of the buffer PVCs (it must offer ReadWriteMany)",
    )
    cpu_request: str = Field(
        "2",
        pattern=CPU,
        description="CPU request of each heavy step (sizes its Dask LocalCluster)",
    )
    cpu_limit: str = Field("4", pattern=CPU, description="CPU limit of each heavy step")
    memory_request: str = Field(
        "4Gi",
        pattern=BYTES,
        description="Memory request of each heavy step",
    )
    memory_limit: str = Field(
        "8Gi",
        pattern=BYTES,
        description="Memory limit of each heavy step",
    )
    step_deadline_s: int = Field(
        21600, ge=60, le=604800, description="Deadline of each heavy step's pod (s)"
    )
    dask_cluster: bool = Field(
        False,
        description="Create a DaskCluster proc-<pb_id>-dask (dask-kubernetes operator) of "
        "n_workers workers, removed at the end of the run",
    )
    artifacts: bool = Field(
        False,
        description="Also publish the previews and report.html as output artifacts of the "
        "report step (needs the cluster's default artifact repository)",
    )
    dask_scheduler: str = Field(
        "",
        description="Dask scheduler of the heavy steps (tcp://HOST:PORT or HOST:PORT, Dask's "
        "port is 8786); empty: a LocalCluster in each step's pod (`batch-imaging submit` fills "
        "it in for dask_cluster)",
    )

    # -- science ----------------------------------------------------------------------
    configuration: str = Field(
        "ska1-low",
        description="Array layout: ska1-low (real SKA1-Low, AA4), lowbd2 (RASCIL's LOWBD2) or a "
        "layout CSV (name + WGS84 lon/lat/height, ITRF XYZ or ENU about a given centre): a path "
        "or buffer:<name>/<file>",
    )
    sky_model: str = Field(
        "gleam",
        description="Sky: gleam (the shipped GLEAM subset, 10 deg around RA 0, Dec -30), "
        "synthetic (seeded GLEAM-like population, any field) or a catalogue file (CSV or "
        "WSClean/DP3 sourcedb): a path or buffer:<name>/<file>",
    )
    flux_limit: float = Field(
        3.0, ge=0, description="gleam/synthetic: sources above this at 151 MHz (Jy)"
    )
    phase_error: float = Field(1.0, ge=0, le=10, description="Station phase error sigma (rad)")
    seed: int = Field(180555, ge=0, lt=2**63, description="Random seed of the corruption")
    npixel: int = Field(1024, ge=32, le=16384, description="Image size (pixels, even)")
    cellsize: float = Field(0.0005, gt=0, le=0.05, description="Pixel size (rad)")
    epsilon: float = Field(
        1e-4, ge=1e-12, le=1e-2, description="Gridder accuracy (1e-4: no measurable ICAL loss)"
    )
    niter: int = Field(1000, ge=0, le=1_000_000, description="CLEAN iterations per major cycle")
    nmajor: int = Field(
        5, ge=1, le=50, description="Major cycles (at most: ICAL stops once more would repeat it)"
    )
    gain: float = Field(0.25, gt=0, le=1, description="CLEAN loop gain")
    threshold: float = Field(0.1, ge=0, description="Absolute CLEAN threshold (Jy)")
    fractional_threshold: float = Field(
        0.1, ge=0, lt=1, description="CLEAN threshold relative to the peak"
    )
    solver_niter: int = Field(50, ge=1, le=1000, description="Gain solver iterations")
    solver_tol: float = Field(1e-10, gt=0, le=1e-2, description="Gain solver tolerance")
    algorithm: Literal["hogbom", "msclean", "mmclean"] = Field(
        "mmclean", description="Deconvolution: Hogbom, multi-scale, or MS-MFS across windows"
    )
    scales: tuple[Annotated[float, Field(ge=0, le=1024)], ...] = Field(
        (0.0, 3.0, 10.0), min_length=1, description="msclean/mmclean scale sizes (pixels)"
    )
    nmoment: int = Field(2, ge=1, le=4, description="mmclean Taylor terms")
    psf_support: int = Field(
        128, ge=4, le=8192, description="Half-width of the PSF patch of the minor cycle (pixels)"
    )
    window_shape: Literal["none", "quarter", "no_edge"] = Field(
        "none", description="Clean window: whole image, inner half, or all but a 16-pixel edge"
    )
    weighting: Literal["natural", "uniform", "robust"] = Field(
        "natural", description="Imaging weights"
    )
    robust: float = Field(0.0, ge=-2, le=2, description="Briggs robustness (weighting=robust)")
    calibration_context: str = Field(
        "TGB", pattern=r"^T?G?B?$", description="Calibration terms solved in ICAL, in order"
    )
    # cycle 0 images the data as they are: there is no model to solve against before it
    t_first_selfcal: int = Field(1, ge=0, le=50, description="First cycle solving T (0 acts as 1)")
    g_first_selfcal: int = Field(3, ge=0, le=50, description="First cycle solving G (0 acts as 1)")
    b_first_selfcal: int = Field(4, ge=0, le=50, description="First cycle solving B (0 acts as 1)")
    global_solution: bool = Field(
        False, description="Solve each term once for all windows (default: per window)"
    )
    band_windows: int = Field(
        4,
        ge=1,
        le=1024,
        description="Windows per ICAL task, gridded together (fewer past 64 MiB of visibilities)",
    )
    t_phase_only: bool = Field(True, description="T solves phase only")
    g_phase_only: bool = Field(False, description="G solves phase only")
    b_phase_only: bool = Field(False, description="B solves phase only")
    t_interval_s: float = Field(0.0, ge=0, description="T solution interval (s, 0: integration)")
    g_interval_s: float = Field(0.0, ge=0, description="G solution interval (s, 0: integration)")
    b_interval_s: float = Field(1e5, ge=0, description="B solution interval (s, 0: integration)")
    export_ms: bool = Field(
        False, description="Also write each visibility store as a Measurement Set (*.ms)"
    )

    @field_validator("*", mode="before")
    @classmethod
    def _json_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """Refuse true/false for a number; take an integral float (``1e20``) of an integer
        field as that integer, so that a range error names the bound (pydantic's int
        parsing gave up on floats past 2**63 without one)."""
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and annotation in (int, float):
            raise ValueError(f"must be {_NUMBER_KINDS[annotation]}, not true/false")
        if annotation is int and isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    @field_validator("pb_id")
    @classmethod
    def _pb_id(cls, value: str) -> str:
        if not PB_ID.match(value):
            raise ValueError("must match ^[A-Za-z0-9-]{1,64}$ (letters, digits and '-')")
        if not RFC1123_LABEL.match(value) or len(value) > PB_ID_K8S_MAX:
            raise ValueError(
                f"must also name Kubernetes objects (buff-<pb_id>-vis, "
                f"proc-<pb_id>-dask-scheduler): lower-case letters, digits and '-', "
                f"starting and ending with a letter or digit, at most {PB_ID_K8S_MAX} characters"
            )
        return value

    @field_validator("dask_scheduler")
    @classmethod
    def _scheduler_address(cls, value: str) -> str:
        match = SCHEDULER.match(value)
        if value and not (match and 1 <= int(match.group(1)) <= 65535):
            raise ValueError(
                "must be tcp://HOST:PORT or HOST:PORT (PORT 1-65535, Dask's is 8786), or empty "
                "for a LocalCluster in each step"
            )
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

    @field_validator("configuration", "sky_model")
    @classmethod
    def _file_reference(cls, value: str, info: ValidationInfo) -> str:
        return file_reference(value, NAMED_FILES[info.field_name])

    @field_validator("npixel")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError("must be even (32..16384)")
        return value

    def _check_resources(self) -> None:
        """What Kubernetes would refuse (a request above its limit) or kill at once."""
        if quantity(self.cpu_request) <= 0:
            raise _field_error("cpu_request", self.cpu_request, "must be > 0")
        if quantity(self.cpu_request) > quantity(self.cpu_limit):
            raise _field_error(
                "cpu_request", self.cpu_request, f"must be <= cpu_limit ({self.cpu_limit})"
            )
        if quantity(self.buffer_size) < quantity(MIN_BUFFER):
            raise _field_error("buffer_size", self.buffer_size, f"must be >= {MIN_BUFFER}")
        if quantity(self.memory_limit) < quantity(MIN_MEMORY):
            raise _field_error("memory_limit", self.memory_limit, f"must be >= {MIN_MEMORY}")
        if quantity(self.memory_request) > quantity(self.memory_limit):
            raise _field_error(
                "memory_request",
                self.memory_request,
                f"must be <= memory_limit ({self.memory_limit})",
            )

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        if self.freq_max < self.freq_min:
            raise _field_error("freq_max", self.freq_max, f"must be >= freq_min ({self.freq_min})")
        if self.nfreqwin > 1 and self.freq_max == self.freq_min:
            raise _field_error("freq_max", self.freq_max, "must exceed freq_min when nfreqwin > 1")
        if self.buffer_vis == self.buffer_img:
            raise _field_error(
                "buffer_img", self.buffer_img, "must differ from buffer_vis (the same name)"
            )
        if (half := self.npixel * self.cellsize / 2) * math.sqrt(2) >= 1:
            raise _field_error(
                "cellsize",
                self.cellsize,
                f"with npixel = {self.npixel} the image reaches l, m = +-{half:.3g}: its corners "
                f"lie off the sky (l^2 + m^2 >= 1); allowed npixel x cellsize < "
                f"{math.sqrt(2):.4f} rad",
            )
        self._check_resources()
        context = self.calibration_context
        if context and all(self.first_selfcal(term) > self.nmajor for term in context):
            late = ", ".join(
                f"{term} starts at cycle {self.first_selfcal(term)} ({term.lower()}_first_selfcal)"
                for term in context
            )
            raise _field_error(
                "calibration_context",
                self.calibration_context,
                f"no term is ever solved with nmajor = {self.nmajor}: {late}; raise nmajor or "
                "lower the first cycles, or use '' for no calibration",
            )
        highest = highest_declination()
        if self.dec >= highest:
            raise _field_error(
                "dec",
                self.dec,
                f"is below the horizon of SKA1-Low during HA "
                f"-{HOUR_ANGLE_LIMIT_DEG:g}..+{HOUR_ANGLE_LIMIT_DEG:g} deg; "
                f"allowed -90 <= dec < {highest:.2f}",
            )
        self._check_sky()
        if self.configuration not in NAMED_FILES["configuration"]:
            stations = _readable(self.configuration, "configuration")
            if stations is not None:
                _check_rmax(stations, self.rmax)
        elif (nstations := _shipped_count(self.configuration, self.rmax)) < 2:
            raise _field_error(
                "rmax",
                self.rmax,
                f"selects {nstations} {self.configuration} station(s); at least 2 are needed "
                f"(rmax >= {minimum_rmax(self.configuration):.1f} m)",
            )
        return self

    def _check_sky(self) -> None:
        """The shipped GLEAM subset covers the field, a synthetic sky is finite and a
        catalogue file parses."""
        if self.sky_model == "gleam":
            from steps.science import sky

            args = (self.ra, self.dec, self.freq_min, self.npixel, self.cellsize)
            if problem := sky.gleam_coverage_problem(*args):
                raise _field_error("sky_model", self.sky_model, problem)
            args = (self.flux_limit, self.ra, self.dec, self.npixel, self.cellsize)
            if problem := sky.gleam_flux_problem(*args):
                raise _field_error("flux_limit", self.flux_limit, problem)
        elif self.sky_model == "synthetic":
            from steps.science import sky, synthetic

            if self.flux_limit <= 0:
                raise _field_error("flux_limit", self.flux_limit, "must be > 0 for synthetic")
            radius = sky.image_radius_deg(self.npixel, self.cellsize)
            count = synthetic.expected_count(self.flux_limit, radius)
            if count > MAX_SYNTHETIC_COMPONENTS:
                raise _field_error(
                    "flux_limit",
                    self.flux_limit,
                    f"gives ~{count:.0f} synthetic sources over this image (at most "
                    f"{MAX_SYNTHETIC_COMPONENTS}); raise flux_limit or image a smaller field",
                )
        else:
            _readable(self.sky_model, "sky_model")

    def first_selfcal(self, term: str) -> int:
        """The first major cycle solving calibration term ``term`` (T, G or B)."""
        return getattr(self, f"{term.lower()}_first_selfcal")

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


# where, how and under which names a run executes, not what it computes (products are
# bit-identical whatever these are): a change does not invalidate a step's completed products
OPERATIONAL = frozenset(
    {
        "n_workers", "config_db", "sbi_id", "buffer_size", "buffer_storage_class",
        "cpu_request", "cpu_limit", "memory_request", "memory_limit", "step_deadline_s",
        "dask_cluster", "artifacts", "dask_scheduler", "pb_id", "buffer_vis", "buffer_img",
    }
)  # fmt: skip
NAMED_FILES = {"configuration": ("ska1-low", "lowbd2"), "sky_model": ("gleam", "synthetic")}
BUFFER_FILE = re.compile(rf"^buffer:({LABEL})/(.+)$")
MAX_SYNTHETIC_COMPONENTS = 100_000


def file_reference(value: str, names: tuple[str, ...]) -> str:
    """A named choice, ``buffer:<name>/<file>`` or an existing file (made absolute)."""
    if value in names:
        return value
    if value.startswith("buffer:"):
        match = BUFFER_FILE.match(value)
        if not match or ".." in Path(match.group(2)).parts or match.group(2).startswith("/"):
            raise ValueError(
                "buffer:<name>/<file> needs a buffer name (RFC 1123 label) and a relative file "
                "path inside it"
            )
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise ValueError(
            f"is neither {' nor '.join(names)} nor an existing file (relative paths are resolved "
            f"against the working directory {Path.cwd()}; inside a buffer use buffer:<name>/<file>)"
        )
    return str(path.absolute())


def _readable(reference: str, field: str, root: Path | None = None) -> Any:
    """Parse a catalogue (``sky_model``) or layout (``configuration``) file if it is reachable
    here (a ``buffer:`` file, under ``root`` or this pod's buffer root, may exist only where
    the buffers are mounted); None if not."""
    from steps.buffers import resolve

    path = resolve(reference, root)
    if not path.is_file():
        return None
    stat = path.stat()
    try:
        return _parse_file(field, str(path), stat.st_mtime_ns, stat.st_size)
    except ValueError as exc:
        raise _field_error(field, reference, str(exc)) from None


@lru_cache(maxsize=8)
def _parse_file(field: str, path: str, mtime_ns: int, size: int) -> Any:
    """Parsed file contents, cached while the file is unchanged (validation runs per step)."""
    from steps.science.catalogue import read_catalogue
    from steps.science.layout import read_layout

    del mtime_ns, size  # cache key only
    return read_layout(Path(path)) if field == "configuration" else read_catalogue(Path(path))


def _check_rmax(stations: Any, rmax: float) -> None:
    from steps.science.layout import check_rmax

    try:
        check_rmax(stations, rmax)
    except ValueError as exc:
        raise _field_error("rmax", rmax, str(exc)) from None


def quantity(text: str) -> float:
    """A Kubernetes resource quantity (``500m``, ``4Gi``, ``2``) as a number."""
    match = QUANTITY.fullmatch(str(text).strip())
    if match is None:
        raise ValueError(f"invalid resource quantity {text!r}")
    number, suffix = float(match.group(1)), match.group(2) or ""
    if suffix[:1] in ("e", "E"):
        return number * 10 ** int(suffix[1:])
    return number * SUFFIX.get(suffix, 1.0)


def _field_error(field: str, value: Any, message: str) -> ParamsError:
    return ParamsError(f"{field} = {value!r}: {message}")


def describe_errors(exc: ValidationError, allowed: Iterable[str] = ()) -> str:
    """One line naming each invalid field, its value and what is allowed."""
    return "; ".join(_describe(error, list(allowed)) for error in exc.errors())


def _describe(error: Any, allowed: list[str]) -> str:
    location = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if not location:  # raised by the model validator: the message names the field itself
        return message
    if error["type"] == "extra_forbidden":
        known = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"{location}: unknown key{known}"
    if error["type"] == "missing":
        return f"{location}: required but missing"
    return f"{location} = {error.get('input')!r}: {message}"


def parse(data: dict[str, Any]) -> Params:
    """Validate a parameter mapping; raise ParamsError with one line per problem."""
    if not isinstance(data, dict):
        raise ParamsError(f"parameters must be a JSON object, not {type(data).__name__}")
    specs = _json_specs()
    wrong = [
        _field_error(name, value, f"must be {_json_form(spec)}, not {_json_kind(value)}")
        for name, value in data.items()
        if not _json_typed(value, (spec := specs.get(name, {})).get("type", ""))
    ]
    if wrong:  # as the published schema says (no "8" for 8, no "yes" for true)
        raise ParamsError("; ".join(str(e) for e in wrong))
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        raise ParamsError(describe_errors(exc, Params.model_fields)) from None


def _json_typed(value: Any, kind: str) -> bool:
    """Whether ``value`` (as JSON decodes it) has the JSON Schema type ``kind`` of a field
    (``8.0`` is an integer there; an array's items are left to the model)."""
    if kind == "array":
        return isinstance(value, list | tuple)
    if kind == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if kind == "number":
        return isinstance(value, int | float)
    if kind == "boolean":
        return isinstance(value, bool)
    return True


def _json_form(spec: dict[str, Any]) -> str:
    """What a field's schema ``spec`` accepts, as an error says it: ``a JSON integer``, or
    for an array (of bounded numbers: ``scales``) their range, with the default as an example."""
    kind = spec.get("type", "")
    if kind != "array":
        return f"a JSON {kind}"
    items = spec["items"]
    return (
        f"a JSON array of {items['type']}s {items['minimum']:g}..{items['maximum']:g} "
        f"(e.g. {json.dumps(spec['default'])})"
    )


def _json_kind(value: Any) -> str:
    kinds = {str: "a string", bool: "a boolean", int: "an integer", float: "a number"}
    kinds |= {list: "an array", dict: "an object", type(None): "null"}
    return kinds.get(type(value), f"a JSON {type(value).__name__}")


@lru_cache(maxsize=1)
def _json_specs() -> dict[str, dict[str, Any]]:
    """Each field's JSON Schema (``params schema``)."""
    return Params.model_json_schema()["properties"]


def parse_strings(data: dict[str, str]) -> Params:
    """Validate parameters given as strings (Argo parameters, CLI flags)."""
    return parse(decode_strings(data))


def pairs(items: Iterable[str], flag: str = "-p") -> dict[str, str]:
    """``NAME=VALUE`` command-line items as a mapping (the last of a name wins)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ParamsError(f"{flag} {item!r}: expected NAME=VALUE")
        out[key] = value
    return out


def decode_strings(data: dict[str, str]) -> dict[str, Any]:
    """Decode string values of non-string fields as JSON (``8``, ``1e8``, ``[0, 3]``; a
    boolean's ``true``/``false`` in any case, as Python and YAML spell them too)."""
    decoded: dict[str, Any] = {}
    for name, text in data.items():
        field = Params.model_fields.get(name)
        if field is None or field.annotation is str:
            decoded[name] = text
            continue
        if field.annotation is bool and text.strip().lower() in ("true", "false"):
            decoded[name] = text.strip().lower() == "true"
            continue
        try:
            decoded[name] = json.loads(text)
        except json.JSONDecodeError:
            decoded[name] = text
    return decoded


def read(path: str | Path) -> Any:
    """Read a JSON parameter file strictly: duplicate keys and NaN/Infinity are errors."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ParamsError(f"cannot read parameter file {path}: {reason}") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ParamsError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    except ValueError as exc:
        raise ParamsError(f"{path}: {exc}") from None


def load(path: str | Path, **overrides: Any) -> Params:
    """Read and validate a JSON parameter file, with overrides applied."""
    data = read(path)
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


def station_count(configuration: str, rmax: float, root: Path | None = None) -> int:
    """Number of stations within rmax of a shipped layout or a layout file (a ``buffer:``
    file under ``root``, else this pod's buffer root)."""
    from steps.science.layout import select_within

    if configuration in NAMED_FILES["configuration"]:
        return _shipped_count(configuration, rmax)
    stations = _readable(configuration, "configuration", root)
    if stations is None:
        raise _field_error("configuration", configuration, "no such file here")
    return len(select_within(stations, rmax).names)


@lru_cache(maxsize=16)
def _shipped_count(configuration: str, rmax: float) -> int:
    from steps.science.layout import load_stations, select_within

    return len(select_within(load_stations(configuration), rmax).names)


@lru_cache(maxsize=4)
def minimum_rmax(configuration: str) -> float:
    """Smallest rmax (m) that selects two stations of a shipped layout, by bisection."""
    lo, hi = 0.0, 100_000.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _shipped_count(configuration, mid) < 2 else (lo, mid)
    return hi
