"""The bare baseline: a FastAPI app that only reads the body and answers 202, served exactly
like the receiver (Gunicorn with the Uvicorn worker) so the two differ only in what the
endpoint does."""

from __future__ import annotations

from fastapi import FastAPI, Request, Response

from benchmarks.payloads import NOTIFICATION_PATH

app = FastAPI()


@app.post(NOTIFICATION_PATH)
async def notification(request: Request) -> Response:
    await request.body()
    return Response(status_code=202)


@app.get("/readyz")
async def readyz() -> Response:
    return Response(status_code=200)
