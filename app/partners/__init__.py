"""Partner bundle ingest: ``POST /v1/bundles`` and ``GET /v1/bundles/{id}``.

Integration partners post FHIR ``batch`` or ``transaction`` bundles; the service authenticates
the partner's Medplum token, authorises every entry against the partner registry, validates it,
limits the partner's rate and concurrency, and forwards the writes to Medplum as the partner.
"""
