"""The view tables on BigQuery (google-cloud-bigquery), the analytics store at scale.

The same ViewDefinitions give the same columns as on DuckDB. Every table is date-partitioned:
by its first date column (an observation's shifted effective date, a condition's shifted
onset), else by ingestion day (the patient table). A page of changed resources is loaded into
a staging table (a load job: free, unlike streaming inserts, and never stuck in a streaming
buffer), then one script deletes the resources' old rows and inserts the new ones.

Credentials are Application Default Credentials: on Cloud Run / GKE the service account of
the workload (workload identity), never a key file (docs/backend/ASYNC_JOBS_ETL.md)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, cast

from google.api_core.exceptions import NotFound
from google.cloud import bigquery

from app.research.stores import Param, Record, StoreState, render_tables, table_names
from app.research.views.runner import Cell, ColumnType, Row, ViewDefinition

if TYPE_CHECKING:
    from google.cloud.bigquery.query import (
        ArrayQueryParameter,
        ScalarQueryParameter,
    )


class _ResultRow(Protocol):
    def values(self) -> Sequence[object]: ...


BQ_TYPES: dict[ColumnType, str] = {
    "string": "STRING",
    "integer": "INT64",
    "decimal": "FLOAT64",
    "boolean": "BOOL",
    "date": "DATE",
}
STATE_TABLE = "export_state"
_DATASET = re.compile(r"^[A-Za-z0-9-]{1,63}\.[A-Za-z0-9_]{1,1024}$")


def _schema(view: ViewDefinition) -> list[bigquery.SchemaField]:
    return [bigquery.SchemaField(name, BQ_TYPES[kind]) for name, kind in view.columns]


def _partitioning(view: ViewDefinition) -> bigquery.TimePartitioning:
    date_column = next((name for name, kind in view.columns if kind == "date"), None)
    return bigquery.TimePartitioning(type_=bigquery.TimePartitioningType.DAY, field=date_column)


def _json_cell(value: object) -> object:
    return value.isoformat() if isinstance(value, dt.date) else value


def _parameter(name: str, value: Param) -> ScalarQueryParameter | ArrayQueryParameter:
    if isinstance(value, list):
        return bigquery.ArrayQueryParameter(name, "STRING", value)
    if isinstance(value, bool):
        return bigquery.ScalarQueryParameter(name, "BOOL", value)
    if isinstance(value, int):
        return bigquery.ScalarQueryParameter(name, "INT64", value)
    if isinstance(value, float):
        return bigquery.ScalarQueryParameter(name, "FLOAT64", value)
    return bigquery.ScalarQueryParameter(name, "STRING", value)


class BigQueryStore:
    def __init__(
        self, client: bigquery.Client, dataset: str, *, location: str | None = None
    ) -> None:
        if not _DATASET.match(dataset):
            raise ValueError("the BigQuery dataset must be given as <project>.<dataset>")
        self._client = client
        self._dataset = dataset
        self._location = location

    @property
    def target(self) -> str:
        return f"bigquery:{self._dataset}"

    def _table(self, name: str) -> str:
        return f"{self._dataset}.{name}"

    def _run(self, sql: str, params: Mapping[str, Param] | None = None) -> list[Record]:
        config = bigquery.QueryJobConfig(
            query_parameters=[_parameter(k, v) for k, v in (params or {}).items()]
        )
        job = self._client.query(sql, job_config=config, location=self._location)
        rows = cast("Iterable[_ResultRow]", job.result())
        return [tuple(cast("Sequence[Cell]", row.values())) for row in rows]

    def state(self) -> StoreState | None:
        try:
            rows = self._run(
                f"SELECT key_version, config_hash FROM `{self._table(STATE_TABLE)}` LIMIT 1"  # noqa: S608 - validated names
            )
        except NotFound:
            return None
        return StoreState(str(rows[0][0]), str(rows[0][1])) if rows else None

    def reset(self, views: Sequence[ViewDefinition], state: StoreState) -> None:
        dataset = bigquery.Dataset(self._dataset)
        if self._location:
            dataset.location = self._location
        self._client.create_dataset(dataset, exists_ok=True)
        for view in views:
            self._client.delete_table(self._table(view.name), not_found_ok=True)
            table = bigquery.Table(self._table(view.name), schema=_schema(view))
            table.time_partitioning = _partitioning(view)
            self._client.create_table(table)
        self._client.delete_table(self._table(STATE_TABLE), not_found_ok=True)
        self._client.create_table(
            bigquery.Table(
                self._table(STATE_TABLE),
                schema=[
                    bigquery.SchemaField("key_version", "STRING"),
                    bigquery.SchemaField("config_hash", "STRING"),
                ],
            )
        )
        self._run(
            f"INSERT INTO `{self._table(STATE_TABLE)}` (key_version, config_hash)"  # noqa: S608 - validated names
            " VALUES (@key_version, @config_hash)",
            {"key_version": state.key_version, "config_hash": state.config_hash},
        )

    def replace(
        self, view: ViewDefinition, resource_ids: Sequence[str], rows: Sequence[Row]
    ) -> None:
        table = self._table(view.name)
        names = [name for name, _ in view.columns]
        script = [f"DELETE FROM `{table}` WHERE id IN UNNEST(@ids);"]  # noqa: S608 - validated
        if rows:
            staging = self._table(f"{view.name}__staging")
            config = bigquery.LoadJobConfig(
                schema=_schema(view),
                write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
                source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
            )
            payload = [{n: _json_cell(row.get(n)) for n in names} for row in rows]
            self._client.load_table_from_json(
                payload, staging, job_config=config, location=self._location
            ).result()
            columns = ", ".join(names)
            script.append(f"INSERT INTO `{table}` ({columns}) SELECT {columns} FROM `{staging}`;")  # noqa: S608
        if resource_ids or rows:
            self._run("\n".join(script), {"ids": list(resource_ids)})

    def query(self, sql: str, params: Mapping[str, Param] | None = None) -> list[Record]:
        rendered = render_tables(sql, {t: f"`{self._table(t)}`" for t in table_names(sql)})
        return self._run(rendered, params)

    def close(self) -> None:
        self._client.close()


def bigquery_client(
    project: str, *, api_endpoint: str | None = None, anonymous: bool = False
) -> bigquery.Client:
    """A client on Application Default Credentials (workload identity in the cloud);
    ``api_endpoint`` and ``anonymous`` are for a local stand-in only."""
    options = {"api_endpoint": api_endpoint} if api_endpoint else None
    if anonymous:
        from google.auth.credentials import AnonymousCredentials  # noqa: PLC0415

        return bigquery.Client(
            project=project, credentials=AnonymousCredentials(), client_options=options
        )
    return bigquery.Client(project=project, client_options=options)
