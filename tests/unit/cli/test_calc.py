"""``starvit calc``: the calculators a clinician runs by hand, on the bots' own code."""

import json

import pytest
from typer.testing import CliRunner

from app.cli.calc import calc_app

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(calc_app, list(args))
    return result.exit_code, result.stdout, result.stderr


def run_json(*args: str) -> dict[str, object]:
    code, out, err = run(*args, "--json")
    assert (code, err) == (0, "")
    document = json.loads(out)
    assert isinstance(document, dict)
    return document


class TestEgfr:
    def test_readable_lines(self) -> None:
        code, out, _ = run(
            "egfr", "--creatinine", "1.2", "--unit", "mg/dL", "--age", "60", "--sex", "female"
        )
        assert code == 0
        assert "eGFR: 52 mL/min/{1.73_m2}" in out
        assert "Category: G3a" in out
        assert "Inker LA" in out
        assert "KDIGO 2012" in out

    def test_json(self) -> None:
        document = run_json(
            "egfr", "--creatinine", "106.1", "--unit", "umol/L", "--age", "60", "--sex", "female"
        )
        assert document["value"] == 52
        assert document["unit"] == "mL/min/{1.73_m2}"
        assert document["category"] == "G3a"
        assert "reason" not in document
        citation = document["citation"]
        assert isinstance(citation, dict)
        assert citation["url"] == "https://doi.org/10.1056/NEJMoa2102953"

    def test_sex_outside_the_equation_is_a_reasoned_no_result(self) -> None:
        document = run_json("egfr", "--creatinine", "1.0", "--age", "40", "--sex", "other")
        assert document["value"] is None
        assert "'female' or 'male' only" in str(document["reason"])


class TestBmi:
    def test_pounds_and_inches(self) -> None:
        code, out, _ = run(
            "bmi",
            "--weight",
            "180",
            "--weight-unit",
            "[lb_av]",
            "--height",
            "70",
            "--height-unit",
            "[in_i]",
        )
        assert code == 0
        assert "BMI: 25.8 kg/m2" in out
        assert "Category: overweight" in out
        assert "WHO Technical Report Series 894" in out

    def test_default_units_kg_cm_and_counselling(self) -> None:
        document = run_json("bmi", "--weight", "97.2", "--height", "180")
        assert (document["value"], document["unit"], document["category"]) == (
            30.0,
            "kg/m2",
            "obesity_class_1",
        )
        suggestion = document["suggestion"]
        assert isinstance(suggestion, dict)
        assert "USPSTF" in suggestion["rationale"]

    @pytest.mark.parametrize("age", ["12", "19"])
    def test_under_20(self, age: str) -> None:
        document = run_json("bmi", "--weight", "40", "--height", "150", "--age", age)
        assert document["value"] is None
        assert document["outcome"] == "not_applicable"
        assert "under 20" in str(document["reason"])


class TestBloodPressure:
    def test_undated_readings_are_separate_occasions(self) -> None:
        code, out, _ = run("bp", "--reading", "142/91", "--reading", "138/88")
        assert code == 0
        assert "Average blood pressure: 140/90 mm[Hg]" in out
        assert "Category: stage_2_hypertension" in out
        assert "Hypertensive crisis: no" in out
        assert "Whelton PK" in out

    def test_dated_readings_on_one_day_give_no_average(self) -> None:
        document = run_json(
            "bp", "--reading", "142/91@2024-05-01T08:00", "--reading", "138/88@2024-05-01T08:10"
        )
        assert document["value"] is None
        assert "at least 2 occasions" in str(document["reason"])

    def test_dated_readings_and_crisis(self) -> None:
        document = run_json(
            "bp", "--reading", "150/95@2024-05-01", "--reading", "182/100@2024-05-20"
        )
        assert document["value"] == {"systolic": 166, "diastolic": 98}
        assert document["crisis"] is True
        suggestion = document["suggestion"]
        assert isinstance(suggestion, dict)
        assert suggestion["urgent"] is True

    def test_kpa(self) -> None:
        document = run_json(
            "bp",
            "--unit",
            "kPa",
            "--reading",
            "18.67/12@2024-05-01",
            "--reading",
            "18.67/12@2024-05-02",
        )
        assert document["value"] == {"systolic": 140, "diastolic": 90}


class TestHba1c:
    def test_diabetes_range_suggests_evaluation(self) -> None:
        code, out, _ = run("hba1c", "--value", "6.7")
        assert code == 0
        assert "HbA1c: 6.7 %" in out
        assert "Category: diabetes" in out
        assert "Suggestion: Evaluate for diabetes" in out

    def test_known_diabetes_suppresses_the_suggestion(self) -> None:
        document = run_json("hba1c", "--value", "6.7", "--has-diabetes")
        assert document["category"] == "diabetes"
        assert document["suggestion"] is None

    def test_ifcc(self) -> None:
        document = run_json("hba1c", "--value", "48", "--unit", "mmol/mol")
        assert (document["value"], document["unit"]) == (6.5, "%")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("egfr", "--creatinine", "1", "--unit", "stone", "--age", "40", "--sex", "male"),
            "'stone' is not a valid UCUM unit",
        ),
        (
            ("egfr", "--creatinine", "-1", "--age", "40", "--sex", "male"),
            "creatinine must be greater than zero",
        ),
        (
            ("bmi", "--weight", "70", "--height", "70", "--height-unit", "kg"),
            "height unit: cannot convert 'kg'",
        ),
        (("bmi", "--weight", "-70", "--height", "170"), "weight must be greater than zero"),
        (("hba1c", "--value", "6.7", "--unit", "mg/dL"), "not supported"),
        (("bp", "--reading", "142-91"), "is not SYSTOLIC/DIASTOLIC"),
        (("bp", "--reading", "abc/91"), "must be numbers"),
        (("bp", "--reading", "142/91@yesterday"), "not an ISO 8601 date"),
        (
            ("bp", "--reading", "142/91@2024-05-01", "--reading", "138/88"),
            "every reading or for none",
        ),
        (("bp", "--reading", "-5/80", "--reading", "120/80"), "systolic must be greater than zero"),
        (("bp", "--reading", "120/80", "--unit", "mmHg"), "'mmHg' is not a valid UCUM unit"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_2(args: tuple[str, ...], message: str) -> None:
    for extra in ((), ("--json",)):
        code, out, err = run(*args, *extra)
        assert code == 2
        assert out == ""
        assert err.count("\n") == 1
        assert err.startswith("Error: ")
        assert message in err


@pytest.mark.parametrize("command", ["egfr", "bmi", "hba1c", "bp"])
def test_missing_option_exits_2(command: str) -> None:
    code, _, err = run(command, "--json")
    assert code == 2
    assert "Missing option" in err


@pytest.mark.parametrize("command", ["egfr", "bmi", "hba1c", "bp"])
def test_help(command: str) -> None:
    code, out, _ = run(command, "--help")
    assert code == 0
    assert "--json" in out
    assert "Example:" in out


def test_help_shows_ucum_codes_verbatim() -> None:
    _, out, _ = run("bmi", "--help")
    assert "[lb_av]" in out
    assert "[in_i]" in out


# The same plausibility guards as the bots (app.clinical.plausibility): refused, never computed.
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("egfr", "--creatinine", "1", "--age", "140", "--sex", "male"),
            "implausible_value: age 140",
        ),
        (("egfr", "--creatinine", "0.01", "--age", "60", "--sex", "male"), "0.1-40 mg/dL"),
        (("egfr", "--creatinine", "88", "--age", "60", "--sex", "male"), "unit_mislabelled"),
        (("bmi", "--weight", "70", "--height", "1.75"), "plausible as 1.75 m"),
        (("bmi", "--weight", "70", "--height", "175", "--age", "140"), "age 140"),
        (("hba1c", "--value", "45"), "plausible as 45 mmol/mol"),
        (("hba1c", "--value", "7.1", "--unit", "mmol/mol"), "plausible as 7.1 %"),
        (("bp", "--reading", "900/50", "--reading", "120/80"), "systolic blood pressure 900"),
    ],
)
def test_implausible_input_is_refused_with_exit_2(args: tuple[str, ...], message: str) -> None:
    for extra in ((), ("--json",)):
        code, out, err = run(*args, *extra)
        assert code == 2
        assert out == ""
        assert err.startswith("Error: ")
        assert err.count("\n") == 1
        assert message in err
