"""The de-identified research zone: extract from Medplum, de-identify, load flat tables
(DuckDB or BigQuery) and a graph (LadybugDB or TigerGraph), answer researchers' aggregates."""
