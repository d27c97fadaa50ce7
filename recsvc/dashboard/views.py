"""The dashboard's pages: a view reads the request, calls ``recsvc.dashboard.pages`` (which
calls the service core) and renders a template. Every page needs a signed-in viewer with
``dashboard:read``; erasure and ending an experiment need ``admin``; every POST form carries
the session's CSRF token and is refused without it.

Pages are HTML, errors too (the API's problem+json stays the API's): an error's status and
title come from the API's one table (``recsvc.api.problems``). Each page says how long the
server took to render it (in the footer and a ``Server-Timing`` header).
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import wraps
from importlib import resources
from typing import Any, Concatenate, ParamSpec
from urllib.parse import urlencode, urlsplit

from flask import Blueprint, Flask, Response
from werkzeug.exceptions import HTTPException

from recsvc import defaults, render
from recsvc.api.access import KEY_NAME
from recsvc.api.context import service_of, this_app, this_request, this_service
from recsvc.api.observability import STARTED
from recsvc.api.problems import Problem, problem_of
from recsvc.bundle import QUARANTINE_FILE
from recsvc.dashboard import pages
from recsvc.dashboard.evaluation import EvaluationReport
from recsvc.dashboard.history import ExperimentHistory
from recsvc.dashboard.session import ADMIN_SCOPE, COOKIE, READ_SCOPE, Sessions, Viewer
from recsvc.dashboard.telemetry import Telemetry
from recsvc.errors import AuthError, Forbidden, InvalidParameter, RecsvcError, UnknownCustomer
from recsvc.text import MAX_KEY_LENGTH, text_problem
from recsvc.triggers import KINDS, BadCursor, Key, decode_cursor, encode_cursor

log = logging.getLogger(__name__)

STATE = "recsvc.dashboard"  # the app's Dashboard in app.extensions
STATIC = str(resources.files("recsvc") / "static")
RENDERED_MARK = "<!--rendered-ms-->"  # replaced by the server time once the page is rendered
CSRF_FIELD = "csrf"
SECURITY_HEADERS = {
    # Scripts and styles from this origin only: a title that got past escaping could not
    # run, nor load anything.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

blueprint = Blueprint(
    "dashboard", __name__, url_prefix="/dashboard", static_folder=STATIC, static_url_path="/static"
)
P = ParamSpec("P")


@dataclass(frozen=True)
class Dashboard:
    """What the dashboard keeps per app: sessions, request-rate readings, the evaluation."""

    sessions: Sessions
    telemetry: Telemetry
    evaluation: EvaluationReport
    history: ExperimentHistory


class PageError(Exception):
    """An error page: status, title and what to do about it."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail


def this_dashboard() -> Dashboard:
    found: Dashboard = this_app().extensions[STATE]
    return found


def root() -> str:
    """The dashboard's URL path (under the app's mount point, when it has one)."""
    return this_request().script_root + blueprint.url_prefix  # type: ignore[operator]


# Signing in


def see_other(location: str) -> Response:
    """303: go there with GET (after a form, or to sign in)."""
    return Response(status=303, headers={"Location": location})


def current_viewer() -> Viewer | None:
    return this_dashboard().sessions.viewer(this_request().cookies.get(COOKIE))


def signed_in(view: Callable[Concatenate[Viewer, P], Response]) -> Callable[P, Response]:
    """The view, given the signed-in viewer; without one, the sign-in page (which comes back
    here after)."""

    @wraps(view)
    def checked(*args: P.args, **kwargs: P.kwargs) -> Response:
        viewer = current_viewer()
        if viewer is None:
            served = this_request()
            back = served.full_path if served.method == "GET" else ""
            query = f"?{urlencode({'next': back})}" if back else ""
            return see_other(f"{root()}/sign-in{query}")
        this_request().environ[KEY_NAME] = viewer.name  # the request's log line names it
        return view(viewer, *args, **kwargs)

    return checked


def checked_form(viewer: Viewer, scope: str = READ_SCOPE) -> dict[str, str]:
    """A POST form's fields, once its CSRF token and origin check out and the viewer holds
    ``scope``; else a 403 page."""
    served = this_request()
    _same_origin()
    form = {name: served.form.get(name, "") for name in served.form}
    if not viewer.csrf_matches(form.get(CSRF_FIELD)):
        raise PageError(
            403,
            "Form expired",
            "This form's security token is missing or does not match your session. Go back, "
            "reload the page and send it again.",
        )
    if scope not in viewer.scopes:
        raise PageError(403, "Not allowed", f"This needs a key with the {scope} scope.")
    return form


def _same_origin() -> None:
    """A browser names the page a POST came from; one from another site is refused (the
    session cookie's SameSite=Strict and the CSRF token refuse it too)."""
    served = this_request()
    origin = served.headers.get("Origin")
    if origin is not None and origin != "null":
        if urlsplit(origin).netloc != served.host:
            raise PageError(403, "Not allowed", "This form was sent from another site.")


@blueprint.get("/sign-in")
def sign_in_form() -> Response:
    if current_viewer() is not None:
        return see_other(_next_page(this_request().args.get("next")))
    return page("sign_in.html", None, next=this_request().args.get("next", ""))


@blueprint.post("/sign-in")
def sign_in() -> Response:
    sessions = this_dashboard().sessions
    _same_origin()
    form = this_request().form
    back = form.get("next", "")
    if not sessions.enabled:
        return page("sign_in.html", None, 503, next=back, problem=NO_SECRET)
    try:
        viewer, cookie = sessions.sign_in(form.get("key", ""))
    except Forbidden:  # an AuthError too: first
        log.warning("dashboard sign-in refused: the key lacks %s", READ_SCOPE)
        problem = f"That key is valid but lacks the {READ_SCOPE} scope; ask for one that has it."
        return page("sign_in.html", None, 403, next=back, problem=problem)
    except AuthError:
        log.warning("dashboard sign-in refused: not a configured key")
        problem = "That key is not valid. Paste the whole key (it starts with rk_)."
        return page("sign_in.html", None, 401, next=back, problem=problem)
    log.info("dashboard sign-in", extra={"fields": {"api_key": viewer.name}})
    response = see_other(_next_page(back))
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=sessions.max_age,
        path=root(),
        secure=this_request().is_secure,
        httponly=True,
        samesite="Strict",
    )
    return response


NO_SECRET = (
    "The dashboard cannot sign anyone in: RECSVC_SECRET_KEY is not set, and sessions are "
    "signed with it. Set it (32 characters or more, e.g. `openssl rand -hex 32`) and restart."
)


def _next_page(raw: str | None) -> str:
    """Where to go after signing in: a dashboard page of this site, else the overview."""
    home = f"{root()}/"
    if not raw or not raw.startswith(home) or "//" in raw or "\\" in raw:
        return home
    return raw


@blueprint.post("/sign-out")
@signed_in
def sign_out(viewer: Viewer) -> Response:
    checked_form(viewer)
    response = see_other(f"{root()}/sign-in")
    response.delete_cookie(COOKIE, path=root(), httponly=True, samesite="Strict")
    return response


# Pages


@blueprint.get("/")
@signed_in
def overview(viewer: Viewer) -> Response:
    service = this_service()
    dashboard = this_dashboard()
    model = service.model()
    found = pages.overview(service, model, dashboard.telemetry, dashboard.evaluation)
    return page("overview.html", viewer, section="overview", **found)


@blueprint.get("/quarantine")
@signed_in
def quarantine(viewer: Viewer) -> Response:
    args = this_request().args
    after = _offset(args.get("after"))
    source = args.get("source") or None
    model = this_service().model()
    found = pages.quarantine(model, after, source, viewer.admin)
    return page("quarantine.html", viewer, section="overview", rows=found, source=source)


@blueprint.get("/quarantine.csv")
@signed_in
def quarantine_file(viewer: Viewer) -> Response:
    if not viewer.admin:
        raise PageError(403, "Not allowed", f"The raw file needs the {ADMIN_SCOPE} scope.")
    model = this_service().model()
    path = model.bundle.path / QUARANTINE_FILE
    if not path.is_file():
        raise PageError(404, "No quarantine file", "This bundle has no quarantine file.")
    response = Response(path.read_bytes(), mimetype="text/csv")
    response.headers["Content-Disposition"] = (
        f'attachment; filename="quarantine-{model.version}.csv"'
    )
    return response


def _offset(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 15:
        raise InvalidParameter("after", "is not where a page of this file starts")
    return int(raw)


@blueprint.get("/customers")
@signed_in
def customers(viewer: Viewer) -> Response:
    service = this_service()
    model = service.model()
    starters = pages.top_customers(service, model)
    return page("customers.html", viewer, section="customers", starters=starters)


@blueprint.post("/customers")
@signed_in
def look_up(viewer: Viewer) -> Response:
    """A customer by any key. One the model knows is shown at their canonical id's address;
    another (say, an address only events name) is shown here, so that no address or number
    ever lands in a URL, a browser's history or a log."""
    form = checked_form(viewer)
    key = form.get("key", "").strip()
    problem = text_problem(key, MAX_KEY_LENGTH)
    if problem is not None:
        service = this_service()
        starters = pages.top_customers(service, service.model())
        message = f"The key is not one a customer could have: {problem}."
        return page(
            "customers.html", viewer, 400, section="customers", starters=starters, problem=message
        )
    service = this_service()
    model = service.model()
    resolved = service.resolve(model, key)
    if resolved.customer_id is not None:
        return see_other(f"{root()}/customer?{urlencode({'id': resolved.customer_id})}")
    found = pages.customer(service, model, key, viewer.admin)
    return page("customer.html", viewer, section="customers", linkable=False, **found)


@blueprint.get("/customer")
@signed_in
def customer(viewer: Viewer) -> Response:
    args = this_request().args
    key = (args.get("id") or "").strip()
    problem = text_problem(key, MAX_KEY_LENGTH)
    if problem is not None:
        raise InvalidParameter("id", problem)
    service = this_service()
    model = service.model()
    found = pages.customer(
        service,
        model,
        key,
        viewer.admin,
        owned_page=_page_number(args.get("owned"), "owned"),
        events_page=_page_number(args.get("events"), "events"),
        slot=args.get("slot"),
    )
    return page("customer.html", viewer, section="customers", linkable=True, **found)


@blueprint.post("/customer/erase")
@signed_in
def erase(viewer: Viewer) -> Response:
    """Two steps: the first shows what will be erased and asks for the customer's id (or the
    key, for one the model does not know) to be typed; the second erases."""
    form = checked_form(viewer, ADMIN_SCOPE)
    key = form.get("key", "").strip()
    problem = text_problem(key, MAX_KEY_LENGTH)
    if problem is not None:
        raise InvalidParameter("key", problem)
    service = this_service()
    model = service.model()
    resolved = service.resolve(model, key)
    expected = resolved.customer_id or key
    context: dict[str, Any] = {"key": key, "expected": expected, "resolved": resolved}
    if "confirm" not in form:
        return page("erase.html", viewer, section="customers", **context)
    if form["confirm"].strip() != expected:
        context["problem"] = "What you typed does not match; nothing was erased."
        return page("erase.html", viewer, 400, section="customers", **context)
    try:
        receipt = service.erase(model, key)
    except UnknownCustomer as error:
        context["unknown"] = str(error)
        return page("erased.html", viewer, 404, section="customers", **context)
    log.info("dashboard erasure", extra={"fields": {"api_key": viewer.name}})
    return page("erased.html", viewer, section="customers", receipt=receipt, **context)


@blueprint.get("/tiers")
@signed_in
def tiers(viewer: Viewer) -> Response:
    args = this_request().args
    service = this_service()
    model = service.model()
    found = pages.tiers(service, model, args.get("tier"), _page_number(args.get("page"), "page"))
    return page("tiers.html", viewer, section="tiers", **found)


@blueprint.get("/triggers")
@signed_in
def triggers(viewer: Viewer) -> Response:
    args = this_request().args
    chosen = pages.trigger_filter(args.getlist("kind"), args.get("from"), args.get("to"))
    limit = _choice(args.get("limit"), "limit", pages.TRIGGER_PAGE_SIZES)
    after = _cursor(args.get("cursor"))
    service = this_service()
    model = service.model()
    found, last, degraded = pages.triggers_page(service, model, chosen, after, limit)
    query = _trigger_query(chosen) + [("limit", str(limit))]
    next_query = urlencode(query + [("cursor", encode_cursor(last))]) if last else None
    return page(
        "triggers.html",
        viewer,
        section="triggers",
        kinds=KINDS,
        chosen=chosen,
        limit=limit,
        sizes=pages.TRIGGER_PAGE_SIZES,
        triggers=pages.shown_triggers(service, model, found),
        degraded=degraded,
        first_page=after is None,
        next_query=next_query,
        export_query=urlencode(_trigger_query(chosen)),
        periods=[
            (label, urlencode(_trigger_query(pages.TriggerFilter(chosen.kinds, start, end))))
            for label, start, end in pages.recent_periods(model)
        ],
    )


@blueprint.get("/triggers.csv")
@signed_in
def triggers_csv(viewer: Viewer) -> Response:
    args = this_request().args
    chosen = pages.trigger_filter(args.getlist("kind"), args.get("from"), args.get("to"))
    service = this_service()
    model = service.model()
    rows = pages.trigger_rows(service, model, chosen)

    def lines() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(pages.TRIGGER_COLUMNS)
        for row in rows:
            writer.writerow(row)
            if buffer.tell() > 1 << 16:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    response = Response(lines(), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="triggers-{model.version}.csv"'
    return response


def _trigger_query(chosen: pages.TriggerFilter) -> list[tuple[str, str]]:
    query = [("kind", kind) for kind in chosen.kinds] if chosen.kinds != KINDS else []
    if chosen.start is not None:
        query.append(("from", chosen.start.isoformat()))
    if chosen.end is not None:
        query.append(("to", chosen.end.isoformat()))
    return query


def _cursor(raw: str | None) -> Key | None:
    if raw is None:
        return None
    try:
        return decode_cursor(raw.strip())
    except BadCursor:
        raise InvalidParameter("cursor", "is not a page of this feed; start again") from None


def _page_number(raw: str | None, name: str) -> int:
    if raw is None:
        return 1
    if not raw.isdigit() or not 1 <= int(raw) <= 1_000_000:
        raise InvalidParameter(name, "must be a page number")
    return int(raw)


def _choice(raw: str | None, name: str, allowed: tuple[int, ...]) -> int:
    if raw is None:
        return allowed[len(allowed) // 2]
    if not raw.isdigit() or int(raw) not in allowed:
        raise InvalidParameter(name, f"must be one of {', '.join(map(str, allowed))}")
    return int(raw)


@blueprint.get("/experiments")
@signed_in
def experiments(viewer: Viewer) -> Response:
    args = this_request().args
    done, arm = args.get("done"), args.get("arm")
    notice = None
    if done == "promote" and arm:
        notice = f"{arm} is promoted: its bundle now answers everyone."
    elif done == "drop" and arm:
        notice = f"{arm} is dropped: its customers get the first arm left's bundle."
    found = pages.experiments(this_service(), this_dashboard().history)
    return page("experiments.html", viewer, section="experiments", notice=notice, **found)


@blueprint.post("/experiments/end")
@signed_in
def end_experiment(viewer: Viewer) -> Response:
    """Promote or drop an arm, after a confirmation step."""
    form = checked_form(viewer, ADMIN_SCOPE)
    action, arm = form.get("action", ""), form.get("arm", "").strip()
    if action not in ("promote", "drop"):
        raise InvalidParameter("action", "must be promote or drop")
    service = this_service()
    if "confirm" not in form:
        report = service.experiments().experiment
        return page(
            "experiment_end.html",
            viewer,
            section="experiments",
            action=action,
            arm=arm,
            report=report,
        )
    service.end_experiment(
        promote=arm if action == "promote" else None, drop=arm if action == "drop" else None
    )
    log.info(
        "dashboard: %s experiment arm %s", action, arm, extra={"fields": {"api_key": viewer.name}}
    )
    return see_other(f"{root()}/experiments?{urlencode({'done': action, 'arm': arm})}")


# Rendering


def page(template: str, viewer: Viewer | None, status: int = 200, **context: Any) -> Response:
    """The rendered page, with the server time it took (from the request's start)."""
    served = this_request()
    registry = this_service().registry
    model = registry.model
    html = render.dashboard_html(
        template,
        {
            "root": root(),
            "viewer": viewer,
            "csrf_field": CSRF_FIELD,
            "version": model.version if model is not None else None,
            "currency": model.bundle.manifest.channels.currency_symbol if model else "",
            "page_size": defaults.DASHBOARD_PAGE,
            "rendered_mark": RENDERED_MARK,
            **context,
        },
    )
    started = served.environ.get(STARTED)
    elapsed = (time.perf_counter() - started) * 1000 if started is not None else 0.0
    html = html.replace(RENDERED_MARK, f"{elapsed:.1f}", 1)
    response = Response(html, status, mimetype="text/html")
    response.headers["Server-Timing"] = f"app;dur={elapsed:.1f}"
    return response


@blueprint.after_request
def protect(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    started = this_request().environ.get(STARTED)
    if "Server-Timing" not in response.headers and started is not None:
        elapsed = (time.perf_counter() - started) * 1000
        response.headers["Server-Timing"] = f"app;dur={elapsed:.1f}"
    if this_request().endpoint != "dashboard.static":
        response.headers["Cache-Control"] = "no-store"  # pages hold customers' data
    return response


def _error_page(status: int, title: str, detail: str) -> Response:
    viewer = current_viewer()
    return page("error.html", viewer, status, title=title, detail=detail, section=None)


@blueprint.errorhandler(PageError)
def handle_page_error(error: PageError) -> Response:
    return _error_page(error.status, error.title, error.detail)


@blueprint.errorhandler(RecsvcError)
def handle_error(error: RecsvcError) -> Response:
    problem = problem_of(error)
    return _error_page(problem.status, problem.title, problem.detail)


@blueprint.errorhandler(Problem)
def handle_problem(problem: Problem) -> Response:
    return _error_page(problem.status, problem.title, problem.detail)


@blueprint.errorhandler(HTTPException)
def handle_http(error: HTTPException) -> Response:
    status = error.code or 500
    return _error_page(status, error.name, error.description or error.name)


def init_app(app: Flask) -> None:
    service = service_of(app)
    config = service.config
    history = ExperimentHistory(config.events_dir)
    app.extensions[STATE] = Dashboard(
        Sessions(config.secret_key, config.api_keys),
        Telemetry(),
        EvaluationReport(config.evaluation_report),
        history,
    )

    @app.before_request
    def keep_experiment_history() -> None:
        # Here rather than at start: a thread started before gunicorn forks its workers
        # would not run in them. After the first request of a process: one comparison.
        history.sample(service.experiment_report)

    app.register_blueprint(blueprint)
