"""The research views: SQL-on-FHIR v2 ViewDefinition files and their runner (runner.py)."""
