"""Typed FastAPI dependencies: routes declare what they need as ``Annotated`` aliases instead of
reaching into ``request.app.state`` by hand."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.runtime import Runtime
from app.settings import Settings


def runtime_of(request: Request) -> Runtime:
    """The process runtime opened by the app's lifespan."""
    runtime = getattr(request.app.state, "runtime", None)
    if not isinstance(runtime, Runtime):
        raise RuntimeError("the application runtime is not started")
    return runtime


def settings_of(request: Request) -> Settings:
    return runtime_of(request).settings


RuntimeDep = Annotated[Runtime, Depends(runtime_of)]
SettingsDep = Annotated[Settings, Depends(settings_of)]
