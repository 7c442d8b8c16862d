"""Reading a named batch's answers: the resources of a search entry, and a failed entry as the
typed Medplum error the job queue classifies (retry or dead letter)."""

from __future__ import annotations

from app.fhir.resource_json import JSONObject
from app.integrations.medplum import BundleEntryResult, MedplumError
from app.integrations.medplum.responses import error_for_status


def search_resources(entry: BundleEntryResult) -> tuple[list[JSONObject], list[JSONObject]]:
    """``(matches, included)`` of a search entry; raises the entry's error if it failed."""
    if not entry.ok:
        raise entry_error(entry)
    page = entry.search_result()
    if page is None:
        return [], []
    return page.resources, page.included


def entry_error(entry: BundleEntryResult) -> MedplumError:
    return error_for_status(
        entry.status_code,
        outcome=entry.outcome,
        operation=f"batch[{entry.index}]",
        resource_type=None,
        attempts=1,
    )
