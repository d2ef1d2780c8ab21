"""One line from a controller's error answer, for the agent's log and its one-line errors.

The controller answers errors as RFC 9457 problem details (`application/problem+json`:
`type`, `title`, `status`, `detail`, and for 422 `errors: [{field, message}]`). Controllers
from before that answered `{"detail": "..."}` or pydantic's `{"detail": [{"loc", "msg"}]}`
(sometimes with a `message`); both are still read, so an agent works against either.

Besides the line, the agent needs three facts from an answer (see `probes.agent.Agent.reporter`):
whether it says the node was removed (`is_node_removed`), whether a 422 is about the window's
time (`is_clock_refusal`), and how long the controller asks it to wait (`retry_after`). For an
attested join (`probes.join`) it needs why the document was refused (`attestation_cause`) and
whether the Azure nonce was (`is_nonce_refusal`: IMDS may have answered from its cache).
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx

MAX_CHARS = 300
NODE_REMOVED = "urn:meshctl:problem:node-removed"
CLOCK_SKEW = "urn:meshctl:problem:clock-skew"  # not sent yet; a later controller may name it so
CLOCK_FIELD = "window_start"
ATTESTATION_NONCE = "urn:meshctl:problem:attestation-nonce"
# (words in the problem type's slug, or failing that in the detail) -> the cause, as a user would name it
ATTESTATION_CAUSES: tuple[tuple[tuple[str, ...], tuple[str, ...], str], ...] = (
    (("clock",), ("check the clocks", "in the future"), "clock skew"),
    (("nonce",), ("nonce",), "nonce refused"),
    (("signature", "unknown-key", "untrusted-signer"), ("signature", "not configured", "not in the configured"),
     "signature invalid"),
    (("not-configured",), ("no aws trust", "no gcp keys", "no azure"), "no trust roots for this cloud"),
    (("audience",), ("audience", "issuer"), "wrong audience"),
    (("expired", "not-yet-valid"), ("expired", "stale", "not valid before"), "document expired"),
    (("wrong-cloud",), ("presented as", "document of"), "wrong cloud"),
    (("policy",), ("policy",), "join policy refused"),
)  # fmt: skip


def describe(response: httpx.Response, limit: int = MAX_CHARS) -> str:
    """`detail` (with the field errors of a 422), from any of the shapes above; else the body's text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    text = _from_body(body) if isinstance(body, dict) else None
    if not text:
        text = response.text or response.reason_phrase
    return _one_line(text, limit)


def _from_body(body: dict[str, Any]) -> str | None:
    detail = body.get("detail")
    errors = body.get("errors")
    if isinstance(errors, list) and errors:  # problem details, validation
        listed = "; ".join(_field_error(e) for e in errors if isinstance(e, dict))
        return f"{detail} ({listed})" if isinstance(detail, str) and detail else listed
    if isinstance(detail, str) and detail:  # problem details, or the old {"detail": "..."}
        return detail
    if isinstance(body.get("message"), str) and body["message"]:  # old: a message beside pydantic's list
        return str(body["message"])
    if isinstance(detail, list):  # old: pydantic's own 422
        return "; ".join(_pydantic_error(e) for e in detail if isinstance(e, dict))
    title = body.get("title")
    return title if isinstance(title, str) else None


def _field_error(error: dict[str, Any]) -> str:
    field, message = error.get("field"), error.get("message", "")
    return f"{field}: {message}" if field else str(message)


def _pydantic_error(error: dict[str, Any]) -> str:
    loc = error.get("loc") or []
    where = ".".join(str(x) for x in (loc[1:] if loc and loc[0] in ("body", "query", "path") else loc))
    return f"{where}: {error.get('msg', '')}" if where else str(error.get("msg", ""))


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def is_node_removed(response: httpx.Response) -> bool:
    """The controller's explicit "this node was removed": HTTP 410 with problem type `NODE_REMOVED`.

    Nothing else (not a 401, 403 or 404, nor a 410 without that type, e.g. from a proxy) means it.
    """
    return response.status_code == 410 and _body(response).get("type") == NODE_REMOVED


def refuses_peer_columns(response: httpx.Response) -> bool:
    """A 422 about `peers` itself: a controller older than peers-as-columns (it wants a list)."""
    return response.status_code == 422 and _body(response).get("field") == "peers"


def is_clock_refusal(response: httpx.Response) -> bool:
    """A 422 about the window's time (in the future, or older than the controller keeps): a clock problem.

    Problem details name the field (`field: "window_start"`); the old shape said it in the
    detail (`"window_start: is in the future"`).
    """
    if response.status_code != 422:
        return False
    body = _body(response)
    detail = body.get("detail")
    return (
        body.get("type") == CLOCK_SKEW
        or body.get("field") == CLOCK_FIELD
        or (isinstance(detail, str) and detail.startswith(f"{CLOCK_FIELD}:"))
    )


def retry_after(response: httpx.Response, now: float | None = None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date), or None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def is_nonce_refusal(response: httpx.Response) -> bool:
    """The controller refused an attested join for its nonce (problem type `ATTESTATION_NONCE`)."""
    return response.status_code >= 400 and _body(response).get("type") == ATTESTATION_NONCE


def attestation_cause(response: httpx.Response) -> str:
    """Why an attested join was refused, in a few words: 'join policy refused', 'signature invalid',
    'clock skew', 'nonce refused', ... from the problem type; else a 403 is a join policy's refusal
    (meshctl.attest: every document error is a 401); else from the detail's words."""
    body = _body(response)
    kind = body.get("type")
    slug = kind.rsplit(":", 1)[-1] if isinstance(kind, str) else ""
    for slug_words, _detail_words, cause in ATTESTATION_CAUSES:
        if any(w in slug for w in slug_words):
            return cause
    if response.status_code == 403:
        return "join policy refused"
    detail = describe(response).lower()
    for _slug_words, detail_words, cause in ATTESTATION_CAUSES:
        if any(w in detail for w in detail_words):
            return cause
    return "attestation refused"
