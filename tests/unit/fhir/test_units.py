"""UCUM conversion through ucumvert + pint: the units the bots meet, and refusals."""

import math

import pytest

from app.fhir.units import (
    IncompatibleUnitsError,
    InvalidUnitError,
    UnitConversionError,
    convert,
)


@pytest.mark.parametrize(
    ("value", "from_unit", "to_unit", "expected"),
    [
        (1.0, "[lb_av]", "kg", 0.45359237),  # international avoirdupois pound, exact
        (1.0, "[in_i]", "cm", 2.54),  # international inch, exact
        (1500.0, "g", "kg", 1.5),
        (170.0, "cm", "m", 1.7),
        (1.2, "mg/dL", "mg/L", 12.0),
        (106.1, "umol/L", "mmol/L", 0.1061),
        (120.0, "mm[Hg]", "kPa", 15.99868648),  # 1 mmHg = 133.322387 Pa
        (6.5, "%", "1", 0.065),
        (60.0, "mL/min/{1.73_m2}", "mL/min", 60.0),  # annotations carry no meaning
        (37.0, "Cel", "[degF]", 98.6),  # offset units convert correctly
    ],
)
def test_converts_ucum_units(value: float, from_unit: str, to_unit: str, expected: float) -> None:
    assert math.isclose(convert(value, from_unit, to_unit), expected, rel_tol=1e-9)


def test_round_trip_is_identity() -> None:
    assert math.isclose(convert(convert(81.6, "kg", "[lb_av]"), "[lb_av]", "kg"), 81.6)


@pytest.mark.parametrize("unit", ["stone", "kg/m^2", "", " kg", "{score}", "[foo]"])
def test_invalid_ucum_is_refused_with_the_unit_named(unit: str) -> None:
    with pytest.raises(InvalidUnitError, match="not a valid UCUM unit") as caught:
        convert(1.0, unit, "kg")
    assert repr(unit) in str(caught.value)


def test_mismatched_dimensions_are_refused() -> None:
    with pytest.raises(IncompatibleUnitsError, match=r"cannot convert 'kg' \(\[mass\]\)"):
        convert(70.0, "kg", "cm")


def test_both_refusals_are_unit_conversion_errors_with_stable_codes() -> None:
    assert issubclass(InvalidUnitError, UnitConversionError)
    assert issubclass(IncompatibleUnitsError, UnitConversionError)
    assert {InvalidUnitError.error_code, IncompatibleUnitsError.error_code} == {
        "unit_invalid",
        "units_incompatible",
    }
