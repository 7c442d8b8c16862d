"""The ops dashboard's pages (server-rendered Jinja2, SVG charts, one small script of our own
that refreshes the panels): ``/ops/``, sign-in and sign-out, the gap report and the
confirmation step of every action.

Every action is a two-step form: ``GET /ops/confirm/<action>`` shows what it would do (nothing
changes), its form posts to ``/ops/actions/<action>`` with the session's CSRF token, which does
it, audits it and redirects back to the dashboard (post/redirect/get).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from pydantic import BaseModel, ValidationError

from app.integrations.medplum import MedplumError
from app.ops.auth import (
    FLOW_COOKIE,
    SESSION_COOKIE,
    OpsSession,
    SignInRefused,
    csrf_matches,
    same_origin,
)
from app.ops.charts import Series, line_chart
from app.ops.dependencies import OpsAuthDep, current_session, ops_service, request_base
from app.ops.schemas import (
    ActionResult,
    MinutePointModel,
    ReenableRequest,
    ReplayDeadLetterRequest,
    ResendRequest,
    WindowRequest,
)
from app.ops.service import ActionRefused, Actor, OpsService

router = APIRouter(prefix="/ops", include_in_schema=False)

_env = Environment(
    loader=PackageLoader("app.ops", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)

_STATIC = {"ops.css": "text/css; charset=utf-8", "ops.js": "text/javascript; charset=utf-8"}
_ACTIONS: dict[str, type[BaseModel]] = {
    "replay-dead-letter": ReplayDeadLetterRequest,
    "replay-window": WindowRequest,
    "sweep-window": WindowRequest,
    "reenable-subscription": ReenableRequest,
    "resend": ResendRequest,
}
_TITLES = {
    "replay-dead-letter": "Replay a dead letter",
    "replay-window": "Replay every failed event in a window",
    "sweep-window": "Re-run the sweep for a window",
    "reenable-subscription": "Re-enable a Subscription",
    "resend": "$resend one resource",
}
_REFUSALS = {
    "not_ops": "Your Medplum account does not have the ops role. The ops dashboard is for "
    "operations staff only; clinicians, partners and researchers use their own tools.",
    "sign_in_expired": "The sign-in took too long or was started elsewhere. Please sign in again.",
    "state_mismatch": "The sign-in could not be matched to this browser. Please sign in again.",
    "code_refused": "Medplum did not accept the sign-in. Please sign in again.",
    "medplum_unavailable": "Medplum cannot be reached right now. Try again in a moment.",
    "not_signed_in": "Medplum did not accept the sign-in. Please sign in again.",
    "wrong_audience": "This sign-in was not made for the ops dashboard.",
}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _time(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "never"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


_env.filters.update(duration=_duration, utc=_time, ms=_ms)  # pyright: ignore[reportUnknownMemberType]


def _csp(request: Request) -> str:
    return (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )


def render(
    request: Request, template: str, status_code: int = 200, /, **context: object
) -> HTMLResponse:
    html = _env.get_template(template).render(**context)
    return HTMLResponse(
        html,
        status_code=status_code,
        headers={
            "Content-Security-Policy": _csp(request),
            "Cache-Control": "no-store",
            # The receiver's default is no-referrer, with which a browser sends "Origin: null"
            # on form posts; same-origin lets the action forms prove where they come from.
            "Referrer-Policy": "same-origin",
        },
    )


def _charts(points: list[MinutePointModel]) -> dict[str, Markup]:
    times = [p.minute for p in points]
    return {
        "latency": line_chart(
            "End-to-end latency per minute",
            times,
            [
                Series("p50", "info", [p.latency_p50_ms for p in points]),
                Series("p95", "warn", [p.latency_p95_ms for p in points]),
            ],
            "ms",
        ),
        "deliveries": line_chart(
            "Deliveries against failures per minute",
            times,
            [
                Series("deliveries", "ok", [float(p.deliveries) for p in points]),
                Series("refused", "warn", [float(p.refused) for p in points]),
                Series("failed", "bad", [float(p.failed) for p in points]),
            ],
            "per minute",
        ),
        "queue": line_chart(
            "Queue: backlog and oldest waiting event",
            times,
            [
                Series("backlog", "info", [float(p.backlog) for p in points]),
                Series("oldest (s)", "bad", [p.oldest_waiting_seconds for p in points]),
            ],
            "events / s",
        ),
    }


async def _panels(service: OpsService) -> dict[str, object]:
    overview = await service.overview()
    return {
        "overview": overview,
        "dead_letters": await service.dead_letters(50),
        "charts": _charts(await service.series(60)),
        "actions": await service.actions(10),
    }


async def _page_session(request: Request, auth: OpsAuthDep) -> OpsSession | None:
    try:
        session = await current_session(request, auth)
    except SignInRefused:
        return None
    return session if session is not None and session.via == "cookie" else None


def _to_login(request: Request) -> RedirectResponse:
    path = request.url.path
    return RedirectResponse(f"/ops/login?next={path}", status_code=303)


# ------------------------------------------------------------------ static files


@router.get("/static/{name}")
async def static(name: str) -> Response:
    media = _STATIC.get(name)
    if media is None:
        return Response(status_code=404)
    body = resources.files("app.ops").joinpath("static", name).read_bytes()
    return Response(body, media_type=media, headers={"Cache-Control": "max-age=300"})


# ------------------------------------------------------------------ sign-in


@router.get("/login")
async def login(request: Request, auth: OpsAuthDep, next: str | None = None) -> Response:
    if not auth.sessions_enabled:
        return render(
            request,
            "message.html",
            503,
            title="Sign-in is off",
            message="The dashboard's sign-in is not configured (STARVIT_OPS_SESSION_SECRET).",
        )
    client = request.client.host if request.client else "unknown"
    if not auth.limiter.allow(client):
        return render(
            request,
            "message.html",
            429,
            title="Too many sign-ins",
            message=("Too many sign-in attempts from this address. Wait a minute and try again."),
        )
    url, flow = auth.begin(request_base(request), next or "/ops/")
    response = RedirectResponse(url, status_code=303)
    response.set_cookie(FLOW_COOKIE, flow, **auth.cookie_args(600))  # pyright: ignore[reportArgumentType]
    return response


@router.get("/callback")
async def callback(
    request: Request,
    auth: OpsAuthDep,
    code: Annotated[str | None, Query(max_length=512)] = None,
    state: Annotated[str | None, Query(max_length=512)] = None,
    error: Annotated[str | None, Query(max_length=128)] = None,
) -> Response:
    client = request.client.host if request.client else "unknown"
    if not auth.limiter.allow(client):
        return render(
            request,
            "message.html",
            429,
            title="Too many sign-ins",
            message=("Too many sign-in attempts from this address. Wait a minute and try again."),
        )
    if error or not code or not state:
        return render(
            request,
            "message.html",
            400,
            title="Sign-in did not finish",
            message=_REFUSALS["code_refused"],
            retry=True,
        )
    try:
        session, target = await auth.complete(
            request_base(request), code, state, request.cookies.get(FLOW_COOKIE)
        )
    except SignInRefused as refused:
        response = render(
            request,
            "message.html",
            refused.status_code,
            title="Not allowed" if refused.status_code == 403 else "Sign-in failed",
            message=_REFUSALS[refused.reason],
            retry=refused.status_code != 403,
            refused=refused.status_code == 403,
        )
        response.delete_cookie(FLOW_COOKIE, path="/")
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response
    response = RedirectResponse(target, status_code=303)
    response.delete_cookie(FLOW_COOKIE, path="/")
    max_age = max(60, int(session.expires_at - datetime.now(UTC).timestamp()))
    response.set_cookie(SESSION_COOKIE, auth.dump_session(session), **auth.cookie_args(max_age))  # pyright: ignore[reportArgumentType]
    return response


MAX_FORM_BYTES = 8192


async def read_form(request: Request) -> dict[str, str] | None:
    """A small ``application/x-www-form-urlencoded`` body (the dashboard's forms), first value
    of each field; None when it is something else or too large."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        return None
    fields: dict[str, str] = {}
    for key, value in pairs:
        fields.setdefault(key, value[:256])
    return fields


@router.post("/logout")
async def logout(request: Request, auth: OpsAuthDep) -> Response:
    session = await _page_session(request, auth)
    form = await read_form(request) or {}
    if session is not None and not csrf_matches(session, form.get("csrf")):
        return render(
            request,
            "message.html",
            403,
            title="Not allowed",
            message="The form has expired. Reload the dashboard and try again.",
        )
    response = RedirectResponse("/ops/signed-out", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/signed-out")
async def signed_out(request: Request) -> Response:
    return render(
        request,
        "message.html",
        title="Signed out",
        message="You are signed out of the ops dashboard.",
        retry=True,
    )


# ------------------------------------------------------------------ dashboard


@router.get("/")
async def dashboard(
    request: Request,
    auth: OpsAuthDep,
    done: Annotated[int | None, Query(ge=1)] = None,
) -> Response:
    session = await _page_session(request, auth)
    if session is None:
        return _to_login(request)
    service = ops_service(request)
    panels = await _panels(service)
    recent = await service.actions(10)
    notice = next((a for a in recent if a.action_id == done), None) if done else None
    return render(request, "dashboard.html", session=session, notice=notice, **panels)


@router.get("/panels")
async def panels(request: Request, auth: OpsAuthDep) -> Response:
    session = await _page_session(request, auth)
    if session is None:
        return Response(status_code=401)
    service = ops_service(request)
    return render(request, "_panels.html", session=session, **await _panels(service))


@router.get("/gaps")
async def gaps(
    request: Request,
    auth: OpsAuthDep,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    handler: Annotated[str | None, Query(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")] = None,
) -> Response:
    session = await _page_session(request, auth)
    if session is None:
        return _to_login(request)
    service = ops_service(request)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    try:
        window = WindowRequest.model_validate(
            {
                "start": _utc(start) or now - timedelta(hours=1),
                "end": _utc(end) or now + timedelta(minutes=1),
                "handler": handler,
            }
        )
        found = await service.gaps(window.start, window.end, window.handler)
    except ValidationError:
        return render(
            request,
            "message.html",
            422,
            title="Invalid window",
            message="Choose a start before the end, at most 7 days apart.",
        )
    except (ActionRefused, MedplumError):
        return render(
            request,
            "message.html",
            503,
            title="Medplum unavailable",
            message=_REFUSALS["medplum_unavailable"],
        )
    return render(
        request,
        "gaps.html",
        session=session,
        gaps=found,
        window=window,
        handlers=sorted(h.name for h in service.registry.swept()),
    )


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _form_model(action: str, fields: dict[str, str]) -> BaseModel:
    data: dict[str, object] = {k: v for k, v in fields.items() if v != "" and k != "csrf"}
    for key in ("start", "end"):
        value = data.get(key)
        if isinstance(value, str) and value and "+" not in value and not value.endswith("Z"):
            data[key] = value + "+00:00"  # the forms ask for UTC
    data["confirm"] = fields.get("confirm") == "yes"
    return _ACTIONS[action].model_validate(data)


async def _run(service: OpsService, actor: Actor, action: str, model: BaseModel) -> ActionResult:
    confirm = bool(getattr(model, "confirm", False))
    if isinstance(model, ReplayDeadLetterRequest):
        return await service.replay_dead_letter(actor, model.event_id, confirm=confirm)
    if isinstance(model, WindowRequest):
        if action == "replay-window":
            return await service.replay_window(
                actor, model.start, model.end, model.handler, confirm=confirm
            )
        return await service.sweep_window(
            actor, model.start, model.end, model.handler, confirm=confirm
        )
    if isinstance(model, ReenableRequest):
        return await service.reenable(actor, model.handler, confirm=confirm)
    assert isinstance(model, ResendRequest)
    return await service.resend(
        actor, model.handler, model.reference, model.interaction, confirm=confirm
    )


@router.get("/confirm/{action}")
async def confirm(
    request: Request,
    action: str,
    auth: OpsAuthDep,
) -> Response:
    session = await _page_session(request, auth)
    if session is None:
        return _to_login(request)
    service = ops_service(request)
    if action not in _ACTIONS:
        return render(request, "message.html", 404, title="No such action", message="")
    fields = {k: v[:256] for k, v in request.query_params.items() if k in _FIELDS}
    fields.pop("confirm", None)
    try:
        model = _form_model(action, fields)
        preview = await _run(service, _actor(session), action, model)
    except ValidationError:
        return render(
            request,
            "message.html",
            422,
            title="Check the form",
            message="Some values are missing or invalid.",
        )
    except ActionRefused as refused:
        return _refused_page(request, refused)
    except MedplumError:
        return render(
            request,
            "message.html",
            503,
            title="Medplum unavailable",
            message=_REFUSALS["medplum_unavailable"],
        )
    return render(
        request,
        "confirm.html",
        session=session,
        action=action,
        title=_TITLES[action],
        preview=preview,
        fields=fields,
    )


_FIELDS = frozenset({"event_id", "start", "end", "handler", "reference", "interaction", "confirm"})


def _actor(session: OpsSession) -> Actor:
    return Actor(session.profile, session.login_id, session.access_token)


def _refused_page(request: Request, refused: ActionRefused) -> HTMLResponse:
    return render(
        request,
        "message.html",
        refused.status_code if refused.status_code < 600 else 409,
        title="Not done",
        message=f"The action was refused ({refused.code}).",
    )


@router.post("/actions/{action}")
async def act(request: Request, action: str, auth: OpsAuthDep) -> Response:
    session = await _page_session(request, auth)
    if session is None:
        return _to_login(request)
    service = ops_service(request)
    if action not in _ACTIONS:
        return render(request, "message.html", 404, title="No such action", message="")
    form = await read_form(request)
    if form is None:
        return render(
            request,
            "message.html",
            400,
            title="Check the form",
            message="The form could not be read.",
        )
    fields = {k: v for k, v in form.items() if k in _FIELDS or k == "csrf"}
    if not same_origin(request.headers.get("origin"), request_base(request)) or not csrf_matches(
        session, fields.get("csrf")
    ):
        return render(
            request,
            "message.html",
            403,
            title="Not allowed",
            message="The form has expired. Reload the dashboard and try again.",
        )
    if fields.get("confirm") != "yes":
        return render(
            request,
            "message.html",
            400,
            title="Not confirmed",
            message="Actions are done only from their confirmation page.",
        )
    try:
        model = _form_model(action, fields)
        result = await _run(service, _actor(session), action, model)
    except ValidationError:
        return render(
            request,
            "message.html",
            422,
            title="Check the form",
            message="Some values are missing or invalid.",
        )
    except ActionRefused as refused:
        return _refused_page(request, refused)
    except MedplumError:
        return render(
            request,
            "message.html",
            503,
            title="Medplum unavailable",
            message=_REFUSALS["medplum_unavailable"],
        )
    return RedirectResponse(f"/ops/?done={result.action_id or ''}#actions", status_code=303)
