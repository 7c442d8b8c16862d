"""Signed rest-hook notifications as Medplum sends them, built fast enough to generate one per
request inside the load generator (a template split around the variable parts, one HMAC).

Every request is a new resource version (a new ``meta.versionId``), so the receiver records a
new event key and defers a job for each; a repeated version would be a cheap duplicate (200).
The body is a realistic Observation of about 1.4 KB with the ``meta`` Medplum puts on
subscription payloads (author, project, compartment); the data are made up.
"""

from __future__ import annotations

import hmac
import re

import orjson

from app.events.signature import subscription_secret

NOTIFICATION_PATH = "/v1/medplum/notifications"
BOT = "bmi"
SUBSCRIPTION_ID = "0b7b1f5e-bench-4e1a-9b1e-000000000001"

_ID = "@@ID@@"
_VERSION = "@@VERSION@@"
_PATIENT = "@@PATIENT@@"


def _template() -> list[bytes]:
    """The body split around its markers: literal, marker, literal, marker, ..., literal."""
    observation: dict[str, object] = {
        "resourceType": "Observation",
        "id": _ID,
        "meta": {
            "versionId": _VERSION,
            "lastUpdated": "2026-03-01T09:00:00.000Z",
            "author": {"reference": "ClientApplication/partner-acme", "display": "partner-acme"},
            "project": "starvit-dev",
            "compartment": [{"reference": "Project/starvit-dev"}, {"reference": _PATIENT}],
            "source": "https://partner-acme.example/fhir",
        },
        "identifier": [{"system": "https://partner-acme.example/observation-id", "value": _ID}],
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                        "display": "Vital signs",
                    }
                ]
            }
        ],
        "code": {
            "coding": [
                {"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"},
                {"system": "http://snomed.info/sct", "code": "27113001", "display": "Body weight"},
            ],
            "text": "Body weight",
        },
        "subject": {"reference": _PATIENT},
        "encounter": {"reference": "Encounter/bench-encounter-0001"},
        "effectiveDateTime": "2026-03-01T08:55:00.000Z",
        "issued": "2026-03-01T09:00:00.000Z",
        "performer": [{"reference": "Practitioner/bench-practitioner-0001"}],
        "valueQuantity": {
            "value": 95.4,
            "unit": "kg",
            "system": "http://unitsofmeasure.org",
            "code": "kg",
        },
        "interpretation": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                        "code": "N",
                        "display": "Normal",
                    }
                ]
            }
        ],
        "method": {
            "coding": [
                {"system": "http://snomed.info/sct", "code": "363808001", "display": "Weighing"}
            ]
        },
        "device": {"reference": "Device/bench-scale-0001"},
    }
    text = orjson.dumps(observation)
    return re.split(b"(@@[A-Z]+@@)", text)


class NotificationFactory:
    """``request(n)``: the complete HTTP/1.1 request bytes of the n-th notification."""

    def __init__(
        self, secret: str, *, host: str, run_id: str, patients: int = 1000, path: str = ""
    ) -> None:
        # Medplum signs with the Subscription's own secret, derived from the configured one.
        self.secret = subscription_secret(secret, BOT).encode()
        self.run_id = run_id
        self.patients = patients
        self.parts = _template()
        self.head = (
            f"POST {path or NOTIFICATION_PATH} HTTP/1.1\r\n"
            f"Host: {host}\r\n"
            "User-Agent: node-fetch\r\n"
            "Accept: */*\r\n"
            "Content-Type: application/fhir+json\r\n"
            "X-Medplum-Interaction: create\r\n"
            f"X-Medplum-Subscription: {SUBSCRIPTION_ID}\r\n"
            f"X-Starvit-Bot: {BOT}\r\n"
        ).encode()

    def body(self, n: int) -> bytes:
        values = {
            _ID.encode(): f"bench-{self.run_id}-{n:09d}".encode(),
            _VERSION.encode(): b"1",
            _PATIENT.encode(): f"Patient/bench-{self.run_id}-p{n % self.patients:05d}".encode(),
        }
        return b"".join(values.get(part, part) for part in self.parts)

    def signature(self, body: bytes) -> str:
        return hmac.digest(self.secret, body, "sha256").hex()

    def request(self, n: int) -> bytes:
        body = self.body(n)
        trace = f"00000000-0000-4000-8000-{n % 10**12:012d}"
        return b"".join(
            (
                self.head,
                b"X-Signature: ",
                self.signature(body).encode(),
                b"\r\nx-trace-id: ",
                trace.encode(),
                b"\r\nContent-Length: ",
                str(len(body)).encode(),
                b"\r\n\r\n",
                body,
            )
        )
