"""User sky catalogues: CSV or WSClean/DP3 "sourcedb" text, validated row by row.

CSV (header row; blank lines and lines starting with ``#`` are skipped)
    required ``name, ra_deg, dec_deg, flux_jy, ref_freq_hz, alpha``; optional ``curvature``
    (``log10 S = log10 flux_jy + alpha x + curvature x^2``, ``x = log10(nu / ref_freq_hz)``)
    and, for elliptical Gaussians, ``major_arcsec, minor_arcsec, pa_deg`` (FWHM; major axis
    east of north).  Empty optional cells mean 0 (a point source, no curvature).

sourcedb (WSClean component lists, DP3/makesourcedb text)
    a format line ``Format = Name, Type, Ra, Dec, I, ...`` or ``# (Name, Type, ...) = format``;
    ``Type`` POINT or GAUSSIAN; ``Ra`` as ``hh:mm:ss.s`` and ``Dec`` as ``dd.mm.ss.s`` (or
    either as a number ending in ``deg`` or ``rad``); ``SpectralIndex`` ``[alpha, curvature]``
    with ``LogarithmicSI`` true; ``MajorAxis``/``MinorAxis`` arcsec, ``Orientation`` deg.
    Patch rows (empty ``Name``) are skipped; Q, U, V are ignored (Stokes I only).

Every error names the file, the line and the field.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from steps.science.sky import Components

CSV_REQUIRED = ("name", "ra_deg", "dec_deg", "flux_jy", "ref_freq_hz", "alpha")
CSV_OPTIONAL = ("curvature", "major_arcsec", "minor_arcsec", "pa_deg")
SOURCEDB_REQUIRED = ("Name", "Type", "Ra", "Dec", "I")
FORMAT_LINE = re.compile(r"^\s*(?:format\s*=\s*(.*)|#\s*\((.*)\)\s*=\s*format\s*)$", re.IGNORECASE)


class CatalogueError(ValueError):
    """A catalogue or layout file is malformed; the message names file, line and field."""

    def __init__(self, path: Path | str, line: int, field: str, message: str) -> None:
        super().__init__(f"{path}, line {line}, field {field}: {message}")


def read_catalogue(path: Path) -> Components:
    """Read a CSV or sourcedb catalogue (detected from its format line)."""
    lines = _lines(path)
    for _, text in lines:
        if FORMAT_LINE.match(text):
            return _read_sourcedb(path, lines)
    return _read_csv(path, lines)


def _lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogueError(path, 0, "file", f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise CatalogueError(path, 0, "file", f"not UTF-8 text: {exc.reason}") from None
    return [(i, line) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]


def number(
    path: Path, line: int, field: str, text: str, check: Callable[[float], bool], allowed: str
) -> float:
    """Parse a finite number and check it, or raise CatalogueError naming the allowed range."""
    try:
        value = float(text)
    except ValueError:
        raise CatalogueError(path, line, field, f"{text!r} is not a number") from None
    if not math.isfinite(value) or not check(value):
        raise CatalogueError(path, line, field, f"{text.strip()} is out of range ({allowed})")
    return value


class _Rows:
    """Validated columns, appended one source at a time."""

    def __init__(self, path: Path, name_field: str, minor_field: str) -> None:
        self.path = path
        self.name_field = name_field
        self.minor_field = minor_field
        self.lines: dict[str, int] = {}
        self.values: dict[str, list[float]] = {
            k: [] for k in ("ra", "dec", "flux", "ref", "alpha", "curv", "maj", "min", "pa")
        }

    def add(self, line: int, name: str, **values: float) -> None:
        if not name:
            raise CatalogueError(self.path, line, self.name_field, "is empty")
        if name in self.lines:
            raise CatalogueError(
                self.path, line, self.name_field, f"{name!r} repeats line {self.lines[name]}"
            )
        if values["min"] > values["maj"]:
            raise CatalogueError(
                self.path,
                line,
                self.minor_field,
                f"{values['min']:g} exceeds major {values['maj']:g}",
            )
        if (values["maj"] > 0) != (values["min"] > 0):
            raise CatalogueError(
                self.path,
                line,
                self.minor_field,
                "a Gaussian needs both axes > 0 (a point: both 0)",
            )
        self.lines[name] = line
        for key, value in values.items():
            self.values[key].append(value)

    def components(self) -> Components:
        if not self.lines:
            raise CatalogueError(self.path, 0, "rows", "the catalogue holds no sources")
        v = {k: np.array(x, dtype=float) for k, x in self.values.items()}
        return Components(
            names=list(self.lines),
            ra_deg=v["ra"],
            dec_deg=v["dec"],
            flux_ref_jy=v["flux"],
            ref_freq_hz=v["ref"],
            alpha=v["alpha"],
            curvature=v["curv"],
            major_arcsec=v["maj"],
            minor_arcsec=v["min"],
            pa_deg=v["pa"],
        )


def _checks(path: Path, line: int) -> Callable[..., float]:
    """Field parsers for one line: ``get(field, text, kind)``."""
    ranges: dict[str, tuple[Callable[[float], bool], str]] = {
        "ra": (lambda x: 0.0 <= x < 360.0, "0 <= ra < 360 deg"),
        "dec": (lambda x: -90.0 <= x <= 90.0, "-90 <= dec <= 90 deg"),
        "flux": (lambda x: x > 0.0, "> 0 Jy"),
        "ref": (lambda x: x > 0.0, "> 0 Hz"),
        "alpha": (lambda x: abs(x) <= 10.0, "-10 .. 10"),
        "curv": (lambda x: abs(x) <= 10.0, "-10 .. 10"),
        "axis": (lambda x: 0.0 <= x <= 36000.0, "0 .. 36000 arcsec"),
        "pa": (lambda x: -360.0 <= x <= 360.0, "-360 .. 360 deg"),
    }

    def get(field: str, text: str, kind: str) -> float:
        return number(path, line, field, text, *ranges[kind])

    return get


def _read_csv(path: Path, lines: list[tuple[int, str]]) -> Components:
    body = [(i, t) for i, t in lines if not t.lstrip().startswith("#")]
    if not body:
        raise CatalogueError(path, 1, "header", "no header row")
    header_line, header_text = body[0]
    header = [h.strip() for h in next(csv.reader([header_text]))]
    for name in CSV_REQUIRED:
        if name not in header:
            raise CatalogueError(
                path, header_line, name, f"missing column (required: {', '.join(CSV_REQUIRED)})"
            )
    for name in header:
        if name not in CSV_REQUIRED + CSV_OPTIONAL:
            allowed = ", ".join(CSV_REQUIRED + CSV_OPTIONAL)
            raise CatalogueError(path, header_line, name, f"unknown column (allowed: {allowed})")
    rows = _Rows(path, "name", "minor_arcsec")
    for line, text in body[1:]:
        cells = [c.strip() for c in next(csv.reader([text]))]
        if len(cells) != len(header):
            raise CatalogueError(path, line, "row", f"{len(cells)} cells for {len(header)} columns")
        cell = dict(zip(header, cells, strict=True))
        get = _checks(path, line)

        def optional(field: str, kind: str, cell: dict[str, str] = cell, get=get) -> float:
            text = cell.get(field, "")
            return get(field, text, kind) if text else 0.0

        rows.add(
            line,
            cell["name"],
            ra=get("ra_deg", cell["ra_deg"], "ra"),
            dec=get("dec_deg", cell["dec_deg"], "dec"),
            flux=get("flux_jy", cell["flux_jy"], "flux"),
            ref=get("ref_freq_hz", cell["ref_freq_hz"], "ref"),
            alpha=get("alpha", cell["alpha"], "alpha"),
            curv=optional("curvature", "curv"),
            maj=optional("major_arcsec", "axis"),
            min=optional("minor_arcsec", "axis"),
            pa=optional("pa_deg", "pa"),
        )
    return rows.components()


def _split(text: str) -> list[str]:
    """Split a sourcedb line on commas outside ``[...]`` and quotes."""
    cells, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            cells.append(text[start:i].strip())
            start = i + 1
    cells.append(text[start:].strip())
    return cells


def _angle(path: Path, line: int, field: str, text: str) -> float:
    """A sourcedb angle in degrees: ``hh:mm:ss`` (hours), ``dd.mm.ss`` or ``<x>deg|rad``."""
    value = text.strip()
    unit = re.fullmatch(r"([-+]?[0-9.eE+-]+)\s*(deg|rad)", value)
    if unit:
        x = number(path, line, field, unit.group(1), lambda _: True, "")
        return x if unit.group(2) == "deg" else math.degrees(x)
    hours = ":" in value
    parts = value.split(":") if hours else value.split(".")
    if (hours and len(parts) != 3) or (not hours and len(parts) not in (3, 4)):
        raise CatalogueError(
            path, line, field, f"{value!r} is not hh:mm:ss.s, dd.mm.ss.s or a number with deg/rad"
        )
    if not hours:  # dd.mm.ss.s: the last two parts are the seconds
        parts = [parts[0], parts[1], ".".join(parts[2:])]
    sign = -1.0 if parts[0].strip().startswith("-") else 1.0
    d, m, s = (number(path, line, field, p.lstrip("+-"), lambda x: x >= 0, ">= 0") for p in parts)
    if m >= 60 or s >= 60:
        raise CatalogueError(path, line, field, f"{value!r}: minutes and seconds must be < 60")
    return sign * (d + m / 60 + s / 3600) * (15.0 if hours else 1.0)


def _format_fields(path: Path, line: int, spec: str) -> tuple[list[str], dict[str, str]]:
    """Field names and defaults (``Name='value'``) of a format line."""
    names, defaults = [], {}
    for item in _split(spec):
        key, _, default = item.partition("=")
        key = key.strip()
        if not key:
            continue
        names.append(key)
        if default:
            defaults[key] = default.strip().strip("'\"")
    for required in SOURCEDB_REQUIRED:
        if required not in names:
            raise CatalogueError(path, line, required, "missing from the format line")
    return names, defaults


def _read_sourcedb(path: Path, lines: list[tuple[int, str]]) -> Components:
    fields: list[str] = []
    defaults: dict[str, str] = {}
    rows = _Rows(path, "Name", "MinorAxis")
    for line, text in lines:
        match = FORMAT_LINE.match(text)
        if match:
            fields, defaults = _format_fields(path, line, match.group(1) or match.group(2))
            continue
        if text.lstrip().startswith("#"):
            continue
        if not fields:
            raise CatalogueError(path, line, "format", "source before the format line")
        cells = [c.strip("'\"") for c in _split(text)]
        if len(cells) > len(fields):
            raise CatalogueError(path, line, "row", f"{len(cells)} cells for {len(fields)} fields")
        cell = {**defaults, **{k: v for k, v in zip(fields, cells, strict=False) if v}}
        if not cell.get("Name"):
            continue  # a patch definition
        rows.add(line, cell["Name"], **_sourcedb_values(path, line, cell))
    return rows.components()


def _sourcedb_values(path: Path, line: int, cell: dict[str, str]) -> dict[str, float]:
    get = _checks(path, line)
    kind = cell.get("Type", "").upper()
    if kind not in ("POINT", "GAUSSIAN"):
        raise CatalogueError(
            path, line, "Type", f"{cell.get('Type', '')!r} is not POINT or GAUSSIAN"
        )
    if "ReferenceFrequency" not in cell:
        raise CatalogueError(path, line, "ReferenceFrequency", "missing (no default either)")
    terms = cell.get("SpectralIndex", "[]").strip()
    if not (terms.startswith("[") and terms.endswith("]")):
        raise CatalogueError(path, line, "SpectralIndex", f"{terms!r} is not [a, b, ...]")
    coefficients = [t for t in terms[1:-1].split(",") if t.strip()]
    if len(coefficients) > 2:
        raise CatalogueError(
            path, line, "SpectralIndex", "more than 2 terms (alpha, curvature) not supported"
        )
    if coefficients and cell.get("LogarithmicSI", "true").lower() != "true":
        raise CatalogueError(
            path, line, "LogarithmicSI", "only logarithmic spectral indices are supported"
        )
    alpha, curv = ([*coefficients, "0", "0"])[:2]
    ra = _angle(path, line, "Ra", cell["Ra"]) % 360.0
    gaussian = kind == "GAUSSIAN"
    return {
        "ra": get("Ra", f"{ra!r}", "ra"),
        "dec": get("Dec", f"{_angle(path, line, 'Dec', cell['Dec'])!r}", "dec"),
        "flux": get("I", cell["I"], "flux"),
        "ref": get("ReferenceFrequency", cell["ReferenceFrequency"], "ref"),
        "alpha": get("SpectralIndex", alpha, "alpha"),
        "curv": get("SpectralIndex", curv, "curv"),
        "maj": get("MajorAxis", cell.get("MajorAxis", "0"), "axis") if gaussian else 0.0,
        "min": get("MinorAxis", cell.get("MinorAxis", "0"), "axis") if gaussian else 0.0,
        "pa": get("Orientation", cell.get("Orientation", "0"), "pa") if gaussian else 0.0,
    }
