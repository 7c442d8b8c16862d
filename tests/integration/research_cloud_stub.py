"""Loopback HTTP for the cloud clients of the research zone (google-cloud-bigquery and
pyTigerGraph speak ``requests``, which pytest-httpx cannot intercept).

* :class:`ReplayServer` serves a checked-in fixture (``tests/fixtures/research/*.json``): the
  recorded requests in order, each answered with its recorded response. Every request the
  client sends is compared with the recorded one (method, path, query, body; the random job
  ids the BigQuery client generates are normalised), so a change in what the service sends
  fails the test.
* Recording (``STARVIT_RECORD_RESEARCH_FIXTURES=1``) answers with a responder instead and writes
  the fixture. The BigQuery responder keeps the tables in DuckDB and runs the service's SQL on
  them (the shared dialect subset), so the recorded answers are computed from the loaded rows,
  in BigQuery's REST shapes (jobs.insert, jobs.getQueryResults, the multipart upload of a load
  job, tables.insert/delete, datasets.insert). The TigerGraph responder answers REST++ upserts
  and deletes and the interpreted openCypher query with the shapes of TigerGraph 4.x.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import duckdb

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "research"
_JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_VOLATILE = frozenset({"jobId", "requestId"})


@dataclass
class Exchange:
    method: str
    path: str
    query: list[tuple[str, str]]
    body: Any
    status: int = 200
    response: Any = None
    content_type: str = "application/json"


type Responder = Callable[[Exchange], None]


def _normalise(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("<id>" if k in _VOLATILE else _normalise(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, str):
        return _JOB_ID.sub("<id>", value)
    return value


def _parse_body(raw: bytes, content_type: str) -> Any:
    if not raw:
        return None
    if content_type.startswith("multipart/related"):
        # a BigQuery load job: the job resource, then the NDJSON rows
        boundary = content_type.split("boundary=", 1)[1].strip('"')
        parts = [p for p in raw.split(b"--" + boundary.encode()) if p.strip(b"-\r\n ")]
        bodies = [p.split(b"\r\n\r\n", 1)[1].rstrip(b"\r\n") for p in parts]
        return {
            "job": json.loads(bodies[0]),
            "rows": [json.loads(line) for line in bodies[1].splitlines() if line.strip()],
        }
    text = raw.decode("utf-8")
    try:
        return json.loads(text)
    except ValueError:
        return text


@dataclass
class _Server:
    handle: Callable[[Exchange], None]
    httpd: ThreadingHTTPServer = field(init=False)

    def __post_init__(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                exchange = Exchange(
                    method=self.command,
                    path=parts.path,
                    query=sorted(parse_qsl(parts.query)),
                    body=_parse_body(raw, self.headers.get("content-type") or ""),
                )
                try:
                    outer.handle(exchange)
                except Exception as error:  # answer, and let the test see it
                    exchange.status = 599
                    exchange.response = {"stub_error": str(error)}
                payload = (
                    b"" if exchange.response is None else json.dumps(exchange.response).encode()
                )
                self.send_response(exchange.status)
                self.send_header("Content-Type", exchange.content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

            def log_message(self, format: str, *args: object) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])


class FixtureMismatch(AssertionError):
    pass


@contextmanager
def fixture_server(
    name: str, responder: Callable[[], Responder], *, record: bool
) -> Iterator[tuple[int, list[str]]]:
    """``(port, problems)``: replays ``<name>.json`` (or records it with ``responder``)."""
    path = FIXTURES / f"{name}.json"
    problems: list[str] = []
    exchanges: list[dict[str, Any]] = []
    recorded: list[dict[str, Any]] = []
    position = [0]
    lock = threading.Lock()
    if record:
        respond = responder()

        def handle(exchange: Exchange) -> None:
            respond(exchange)
            with lock:
                exchanges.append(
                    {
                        "request": {
                            "method": exchange.method,
                            "path": exchange.path,
                            "query": exchange.query,
                            "body": exchange.body,
                        },
                        "response": {"status": exchange.status, "body": exchange.response},
                    }
                )
    else:
        recorded = json.loads(path.read_text())["exchanges"]

        def handle(exchange: Exchange) -> None:
            with lock:
                index = position[0]
                position[0] += 1
            if index >= len(recorded):
                problems.append(f"unexpected request #{index}: {exchange.method} {exchange.path}")
                exchange.status = 599
                return
            expected = recorded[index]
            seen = {
                "method": exchange.method,
                "path": exchange.path,
                "query": [list(q) for q in exchange.query],
                "body": exchange.body,
            }
            want = {**expected["request"], "query": [list(q) for q in expected["request"]["query"]]}
            if _normalise(seen) != _normalise(want):
                problems.append(
                    f"request #{index} differs:\n  sent     {json.dumps(_normalise(seen))[:600]}"
                    f"\n  recorded {json.dumps(_normalise(want))[:600]}"
                )
            exchange.status = expected["response"]["status"]
            exchange.response = expected["response"]["body"]

    server = _Server(handle)
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.port, problems
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        if record:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"exchanges": exchanges}, indent=1, sort_keys=True) + "\n")
    if not record and position[0] != len(recorded):
        problems.append(f"{len(recorded) - position[0]} recorded requests were never sent")


# --- the recording responders -----------------------------------------------------------------

_BQ_TYPES = {
    "STRING": "VARCHAR",
    "INT64": "BIGINT",
    "INTEGER": "BIGINT",
    "FLOAT64": "DOUBLE",
    "FLOAT": "DOUBLE",
    "BOOL": "BOOLEAN",
    "BOOLEAN": "BOOLEAN",
    "DATE": "DATE",
}


class BigQueryResponder:
    """Tables in DuckDB; queries run there after the few dialect rewrites the shared SQL needs."""

    def __init__(self) -> None:
        self.db = duckdb.connect()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.results: dict[str, tuple[list[dict[str, str]], list[tuple[Any, ...]]]] = {}
        self.tables: dict[str, list[dict[str, Any]]] = {}
        self.counter = 0

    def _name(self, table_id: str) -> str:
        return table_id.replace("`", "").split(".")[-1]

    def _sql(self, sql: str) -> str:
        sql = re.sub(r"`[^`]+`", lambda m: '"' + self._name(m.group(0)) + '"', sql)
        sql = re.sub(r"IN UNNEST\(@(\w+)\)", r"IN (SELECT unnest($\1))", sql)
        return re.sub(r"@(\w+)", r"$\1", sql)

    def _params(self, config: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p in config.get("queryParameters", []):
            value = p["parameterValue"]
            if "arrayValues" in value or p["parameterType"]["type"] == "ARRAY":
                out[p["name"]] = [v["value"] for v in value.get("arrayValues", [])]
            else:
                kind = p["parameterType"]["type"]
                raw = value.get("value")
                out[p["name"]] = (
                    float(raw) if kind == "FLOAT64" else int(raw) if kind == "INT64" else raw
                )
        return out

    def __call__(self, ex: Exchange) -> None:
        path = ex.path
        if ex.method == "POST" and path.endswith("/datasets"):
            ref = ex.body["datasetReference"]
            ex.response = {
                **ex.body,
                "id": f"{ref['projectId']}:{ref['datasetId']}",
                "kind": "bigquery#dataset",
            }
            return
        if ex.method == "DELETE" and "/tables/" in path:
            name = path.rsplit("/", 1)[1]
            if name not in self.tables:
                ex.status = 404
                ex.response = {
                    "error": {
                        "code": 404,
                        "message": f"Not found: Table {name}",
                        "errors": [{"reason": "notFound"}],
                    }
                }
                return
            self.db.execute(f'DROP TABLE "{name}"')
            del self.tables[name]
            ex.status = 204
            return
        if ex.method == "POST" and path.endswith("/tables"):
            ref = ex.body["tableReference"]
            fields = ex.body["schema"]["fields"]
            self._create(ref["tableId"], fields)
            ex.response = {
                **ex.body,
                "kind": "bigquery#table",
                "id": f"{ref['projectId']}:{ref['datasetId']}.{ref['tableId']}",
            }
            return
        if ex.method == "POST" and path.startswith("/upload/") and path.endswith("/jobs"):
            job = ex.body["job"]
            load = job["configuration"]["load"]
            table = load["destinationTable"]["tableId"]
            self._create(table, load["schema"]["fields"], replace=True)
            for row in ex.body["rows"]:
                names = [f["name"] for f in self.tables[table]]
                self.db.execute(
                    f'INSERT INTO "{table}" VALUES ({", ".join("?" for _ in names)})',
                    [row.get(n) for n in names],
                )
            ex.response = self._job(job, state="DONE")
            return
        if ex.method == "POST" and path.endswith("/jobs"):
            query = ex.body["configuration"]["query"]
            job_id = ex.body["jobReference"]["jobId"]
            params = self._params(query)
            try:
                description: list[Any] = []
                rows: list[tuple[Any, ...]] = []
                # a script: its statements one by one (DuckDB prepares one at a time)
                for statement in [s for s in query["query"].split(";\n") if s.strip()]:
                    sql = self._sql(statement.rstrip(";"))
                    used = {k: v for k, v in params.items() if f"${k}" in sql}
                    cursor = self.db.execute(sql, used)
                    description = list(cursor.description or [])
                    rows = cursor.fetchall() if description else []
            except duckdb.CatalogException as error:
                ex.status = 404
                ex.response = {
                    "error": {
                        "code": 404,
                        "message": f"Not found: {error}".split("\n")[0][:120],
                        "errors": [{"reason": "notFound"}],
                    }
                }
                return
            schema = [
                {"name": d[0], "type": self._bq_type(d[1]), "mode": "NULLABLE"} for d in description
            ]
            self.results[job_id] = (schema, rows)
            ex.response = self._job(ex.body, state="DONE")
            return
        if ex.method == "GET" and "/queries/" in path:
            job_id = path.rsplit("/", 1)[1]
            schema, rows = self.results.get(job_id, ([], []))
            ex.response = {
                "kind": "bigquery#getQueryResultsResponse",
                "jobReference": self.jobs[job_id]["jobReference"],
                "jobComplete": True,
                "schema": {"fields": schema},
                "totalRows": str(len(rows)),
                "rows": [
                    {"f": [{"v": None if v is None else str(v)} for v in row]} for row in rows
                ],
            }
            return
        if ex.method == "GET" and "/jobs/" in path:
            job_id = path.rsplit("/", 1)[1]
            ex.response = self.jobs[job_id]
            return
        ex.status = 404
        ex.response = {"error": {"code": 404, "message": f"no route {ex.method} {path}"}}

    def _bq_type(self, duck: object) -> str:
        text = str(duck).upper()
        if "INT" in text:
            return "INT64"
        if text in ("DOUBLE", "FLOAT", "DECIMAL") or text.startswith("DECIMAL"):
            return "FLOAT64"
        if text == "BOOLEAN":
            return "BOOL"
        if text == "DATE":
            return "DATE"
        return "STRING"

    def _create(self, name: str, fields: list[dict[str, str]], *, replace: bool = False) -> None:
        columns = ", ".join(f'"{f["name"]}" {_BQ_TYPES[f["type"]]}' for f in fields)
        verb = "CREATE OR REPLACE TABLE" if replace else "CREATE TABLE"
        self.db.execute(f'{verb} "{name}" ({columns})')
        self.tables[name] = fields

    def _job(self, body: dict[str, Any], *, state: str) -> dict[str, Any]:
        self.counter += 1
        reference = body.get("jobReference") or {
            "projectId": "starvit-research-test",
            "jobId": f"job-{self.counter}",
        }
        job = {
            "kind": "bigquery#job",
            "id": f"{reference['projectId']}:{reference['jobId']}",
            "jobReference": {**reference, "location": "EU"},
            "configuration": body.get("configuration", {}),
            "status": {"state": state},
            "statistics": {
                "creationTime": "1764600000000",
                "startTime": "1764600000100",
                "endTime": "1764600000200",
            },
        }
        self.jobs[reference["jobId"]] = job
        return job


class TigerGraphResponder:
    """REST++ upserts and deletes, the version endpoint, and the interpreted openCypher query
    (answered from the upserted vertices and edges with the query's own logic in Python, since
    no TigerGraph server installs here)."""

    VERSION = (
        "TigerGraph RESTPP: \n --- Version --- \n"
        "TigerGraph version: 4.1.2\n"
        "product  release_4.1.2_11-06-2024  1b6e1e0b7b4b44a5  2024-11-06 08:00:00 -0700\n"
        "gle      release_4.1.2_11-06-2024  3c5e9d7a1f2b4c6d  2024-11-06 08:00:00 -0700\n"
    )

    def __init__(self) -> None:
        self.vertices: dict[str, dict[str, dict[str, Any]]] = {}
        self.edges: list[tuple[str, str, str, dict[str, Any]]] = []

    def __call__(self, ex: Exchange) -> None:
        if ex.method == "GET" and ex.path == "/restpp/version":
            ex.response = {"error": False, "message": self.VERSION, "results": []}
            return
        if ex.method == "DELETE" and "/vertices/" in ex.path:
            kind = ex.path.rsplit("/", 1)[1]
            gone = len(self.vertices.pop(kind, {}))
            self.edges = [e for e in self.edges if e[0] in self.vertices.get("Patient", {})]
            ex.response = {
                "version": {"edition": "enterprise", "api": "v2", "schema": 0},
                "error": False,
                "message": "",
                "results": {"v_type": kind, "deleted_vertices": gone},
            }
            return
        if ex.method == "POST" and ex.path.startswith("/restpp/graph/"):
            accepted_v = accepted_e = 0
            for kind, items in (ex.body.get("vertices") or {}).items():
                for vid, attrs in items.items():
                    self.vertices.setdefault(kind, {})[vid] = {
                        k: v["value"] for k, v in attrs.items()
                    }
                    accepted_v += 1
            for _src_type, sources in (ex.body.get("edges") or {}).items():
                for src, by_edge in sources.items():
                    for edge, targets in by_edge.items():
                        for _tgt_type, tgts in targets.items():
                            for tgt, attrs in tgts.items():
                                self.edges.append(
                                    (src, edge, tgt, {k: v["value"] for k, v in attrs.items()})
                                )
                                accepted_e += 1
            ex.response = {
                "version": {"edition": "enterprise", "api": "v2", "schema": 0},
                "error": False,
                "message": "",
                "results": [{"accepted_vertices": accepted_v, "accepted_edges": accepted_e}],
            }
            return
        if ex.method == "POST" and ex.path == "/gsql/v1/queries/interpret":
            text = str(ex.body)
            if "INTERPRET OPENCYPHER QUERY" not in text:
                ex.status = 400
                ex.response = {"error": True, "message": "not an interpreted openCypher query"}
                return
            ex.response = {
                "error": False,
                "message": "",
                "version": {"edition": "enterprise", "api": "v2", "schema": 0},
                "results": [{"result": self._egfr(text)}],
            }
            return
        ex.status = 404
        ex.response = {"error": True, "message": f"no route {ex.method} {ex.path}"}

    def _egfr(self, text: str) -> list[dict[str, Any]]:
        threshold = float(re.search(r"m\.value < ([0-9.]+)", text).group(1))  # type: ignore[union-attr]
        codes = set(re.findall(r"'([0-9]+-[0-9])'", text))
        low = {
            s
            for s, e, t, a in self.edges
            if e == "MEASURED" and t in codes and float(a["value"]) < threshold
        }
        held: dict[str, set[str]] = {}
        for s, e, t, _a in self.edges:
            if e == "HAS_CONDITION" and s in low:
                held.setdefault(s, set()).add(t)
        pairs: dict[tuple[str, str], int] = {}
        for conditions in held.values():
            for a in conditions:
                for b in conditions:
                    if a < b:
                        pairs[(a, b)] = pairs.get((a, b), 0) + 1
        ordered = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        return [{"condition_a": a, "condition_b": b, "patients": n} for (a, b), n in ordered]
