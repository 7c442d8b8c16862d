"""UCUM unit conversion (https://ucum.org) through ``ucumvert`` and ``pint``.

No hand-written conversion tables: a UCUM code is parsed by ucumvert's grammar into a pint
quantity and pint does the arithmetic. The registry takes a few hundred milliseconds to build,
so it is built once per process, lazily, on the first conversion. It is a private registry:
pint's application registry is left untouched.

Annotations in curly braces carry no meaning in UCUM, so ``mL/min/{1.73_m2}`` converts exactly
like ``mL/min``.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol, cast

import pint
import ucumvert  # pyright: ignore[reportMissingTypeStubs]
from lark import LarkError
from pint.facets.plain import PlainQuantity
from ucumvert import InvalidUcumError  # pyright: ignore[reportMissingTypeStubs]

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["IncompatibleUnitsError", "InvalidUnitError", "UnitConversionError", "convert"]


class UnitConversionError(ValueError):
    """A value cannot be converted between two units; the message says why, for people."""

    error_code: ClassVar[str] = "unit_conversion_failed"


class InvalidUnitError(UnitConversionError):
    """A unit code is not valid UCUM (e.g. ``stone``, ``kg/m^2``)."""

    error_code: ClassVar[str] = "unit_invalid"


class IncompatibleUnitsError(UnitConversionError):
    """Two valid UCUM units measure different kinds of quantity (e.g. ``kg`` and ``cm``)."""

    error_code: ClassVar[str] = "units_incompatible"


class _PintQuantity(Protocol):
    """The part of ``pint.Quantity`` used here, typed (pint's own generics stay unresolved)."""

    @property
    def magnitude(self) -> float: ...
    @property
    def units(self) -> object: ...
    @property
    def dimensionality(self) -> object: ...
    def to(self, other: object, /) -> _PintQuantity: ...


class _PintRegistry(Protocol):
    def Quantity(self, value: float, units: object, /) -> _PintQuantity: ...
    def load_definitions(self, file: Path, /) -> object: ...


class _UcumToPint(Protocol):
    def transform(self, tree: object, /) -> object: ...


class _Ucumvert(Protocol):
    """The part of the (untyped) ucumvert package used here."""

    def get_ucum_parser(self) -> object: ...
    def parse_ucum(self, ucum_code: str, parser: object, /) -> object: ...
    def UcumToPintTransformer(self, *, ureg: object) -> _UcumToPint: ...


@dataclass(frozen=True, slots=True)
class _UcumRegistry:
    registry: _PintRegistry
    parse: Callable[[str], object]
    to_pint: Callable[[object], object]


# One registry per process, built under a lock: quantities cached by ``_unit`` from one
# registry cannot be combined with quantities of another.
_build_lock = threading.Lock()
_built: list[_UcumRegistry] = []


def _ucum_registry() -> _UcumRegistry:
    if _built:
        return _built[0]
    with _build_lock:
        if not _built:
            registry = cast("_PintRegistry", pint.UnitRegistry(cache_folder=None))
            registry.load_definitions(Path(ucumvert.__file__).parent / "pint_ucum_defs.txt")
            ucum = cast("_Ucumvert", ucumvert)
            parser = ucum.get_ucum_parser()
            transformer = ucum.UcumToPintTransformer(ureg=registry)
            _built.append(
                _UcumRegistry(
                    registry=registry,
                    parse=lambda code: ucum.parse_ucum(code, parser),
                    to_pint=transformer.transform,
                )
            )
    return _built[0]


@lru_cache(maxsize=512)
def _unit(code: str) -> _PintQuantity:
    """The pint quantity equal to one ``code`` (e.g. ``10*3/uL`` is 1000 per microlitre)."""
    ucum = _ucum_registry()
    try:
        quantity = ucum.to_pint(ucum.parse(code))
    except InvalidUcumError as exc:
        # ucumvert's message names the unit and the offending column on its first line.
        raise InvalidUnitError(str(exc).splitlines()[0]) from exc
    except (LarkError, pint.PintError) as exc:
        msg = f"{code!r} is not a valid UCUM unit: {type(exc).__name__}"
        raise InvalidUnitError(msg) from exc
    if not isinstance(quantity, PlainQuantity):
        # A bare annotation such as "{score}" parses but names no unit.
        msg = f"{code!r} is not a valid UCUM unit: an annotation alone names no unit."
        raise InvalidUnitError(msg)
    return cast("_PintQuantity", quantity)


def convert(value: float, from_unit: str, to_unit: str) -> float:
    """``value`` expressed in UCUM ``from_unit``, converted to UCUM ``to_unit``.

    Raises ``InvalidUnitError`` when either unit is not valid UCUM and
    ``IncompatibleUnitsError`` when the two measure different dimensions (e.g. ``kg`` to
    ``cm``); both are ``UnitConversionError``. Values are not range-checked here (a
    temperature may be negative); the calculators reject negative or non-finite input.
    """
    source = _unit(from_unit)
    target = _unit(to_unit)
    if source.dimensionality != target.dimensionality:
        msg = (
            f"cannot convert {from_unit!r} ({_dimension(source)}) "
            f"to {to_unit!r} ({_dimension(target)})"
        )
        raise IncompatibleUnitsError(msg)
    registry = _ucum_registry().registry
    try:
        # Built from magnitude and units (not value * source) so offset units such as Cel work.
        quantity = registry.Quantity(value * float(source.magnitude), source.units)
        converted = float(quantity.to(target.units).magnitude) / float(target.magnitude)
    except pint.PintError as exc:
        msg = f"cannot convert {from_unit!r} to {to_unit!r} ({exc})"
        raise UnitConversionError(msg) from exc
    if math.isfinite(value) and not math.isfinite(converted):
        msg = f"cannot convert {from_unit!r} to {to_unit!r} (result is not finite)"
        raise UnitConversionError(msg)
    return converted


def _dimension(quantity: _PintQuantity) -> str:
    dimensionality = str(quantity.dimensionality)
    return "dimensionless" if dimensionality == "dimensionless" else dimensionality
