"""schemathesis against the server's own /openapi.json (issue 9, "a security test battery").

Starts `crowdtick serve` (embedded log, a temporary data directory, a free port, an operator key of
its own) and runs schemathesis's generated requests against every documented operation, in both
its modes (data that fits the document, and data that does not), with the operator key
(`X-Api-Key`) and an old-API user (HTTP Basic) on every request, so authenticated routes run their
real code and not only their 401/403. The run is repeatable: a fixed seed, deterministic
generation, a bounded number of cases per operation (CROWDTICK_SCHEMATHESIS_EXAMPLES, default 25).

What must hold:
- no server error (no 5xx other than a documented 503, no dropped connection, no timeout);
- every response fits the document: its status is documented for the operation, its content type
  is the documented one, and its body validates against the documented schema;
- data that does not fit the document is refused (4xx);
- data that fits the document is accepted, except for the deliberate refusals listed in
  DELIBERATE_REFUSALS (each with why it is right; docs/API.md "Refusals of valid-looking
  requests" says the same to API users).

Not run: `GET /v1/polls/{id}/sse` (an event stream never ends, so every request to a poll that
exists would hang until a timeout; tests/it covers the stream).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import crowdtick_binary

OPERATOR_KEY = "schemathesis-operator-key"
SEED_USER, SEED_PASSWORD = "schemathesis", "schemathesis-password-1"
SEED = 20261130
EXAMPLES = int(os.environ.get("CROWDTICK_SCHEMATHESIS_EXAMPLES", "25"))

#: Checks whose every failure fails the test.
STRICT_CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
]

#: Operations ("METHOD /path", as schemathesis names them) where requests that fit the document
#: are refused on purpose, with why: the document cannot express the rule (it depends on the
#: server's state, such as whether a poll exists or is open, or on several fields at once), and
#: the refusal is the right answer. Every "valid data rejected" case of the run must be in one of
#: these operations.
_WS = ("a plain GET (no `Upgrade: websocket`) is 400 not_a_websocket: the document describes the "
       "upgrade request, which schemathesis does not make")
_SEED_POLL = ("a label that is empty or blank, or a title with a control character, is refused (400 "
              "field errors, as DRF's CharField); JSON Schema in OpenAPI 3.0 cannot constrain "
              "object keys")
_SEED_VOTE = ("the poll must exist and be open, the choice must be one of its labels, and a user votes "
              "once per poll (400/404 as the old API); all depend on the server's state")
DELIBERATE_REFUSALS: dict[str, str] = {
    "GET /v1/polls/{id}/ws": _WS,
    "GET /ws/poll/{id}": _WS,
    "GET /ws/poll/{id}/": _WS,
    "POST /api/polls": _SEED_POLL,
    "POST /api/polls/": _SEED_POLL,
    "POST /polls": _SEED_POLL,
    "POST /polls/": _SEED_POLL,
    "POST /api/polls/{id}/vote": _SEED_VOTE,
    "POST /api/polls/{id}/vote/": _SEED_VOTE,
    "POST /votes": _SEED_VOTE,
    "POST /votes/": _SEED_VOTE,
    "POST /api/register": "a user name is taken once (400 \"A user with that username already exists.\")",
    "POST /api/register/": "a user name is taken once (400 \"A user with that username already exists.\")",
    "POST /v1/polls": ("times must make sense together and now: the close after the open "
                       "(422 invalid_time), max_choices at most the number of options "
                       "(422 invalid_max_choices), labels distinct after trimming"),
    "POST /v1/votes": ("the poll must exist (404 unknown_poll) and be open (409), the options must be "
                       "the poll's, within max_choices (422); all depend on the server's state"),
}

#: Operations where schemathesis's data that does not fit the document is answered 2xx on purpose,
#: each with a probe of the live server that shows the deliberate behaviour still holds (if the
#: probe fails, the allowance lapses and the failure counts).
def _batch_rejects_bad_items_inside_a_200(base: str) -> bool:
    # A batch is judged vote by vote: an item that breaks the schema (here a vote_id over 64 bytes)
    # is a `rejected` result in a 200, so one bad SMS never costs the good ones beside it. A bad
    # `results` parameter, by contrast, is refused (400).
    headers = {"X-Api-Key": OPERATOR_KEY}
    bad_param, _ = http("POST", f"{base}/v1/votes/batch?results=AAA", {"votes": []}, headers)
    status, raw = http("POST", f"{base}/v1/votes/batch",
                       {"votes": [{"poll_id": 1, "option_id": 0, "voter_id": "x", "vote_id": "0" * 65}]},
                       headers)
    if bad_param != 400 or status != 200:
        return False
    body = json.loads(raw)
    return body["rejected"] == 1 and body["results"][0]["error"]["code"] == "invalid_vote_id"


PENDING_NEGATIVE_ACCEPTANCE = {
    "POST /v1/votes/batch": _batch_rejects_bad_items_inside_a_200,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: dict | None = None, headers: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    binary = crowdtick_binary()
    data = tmp_path_factory.mktemp("crowdtick-data")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = data / "server.log"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CROWDTICK_OPERATOR_KEYS": json.dumps([OPERATOR_KEY]),
        # The batch route takes aggregator keys: give one aggregator the key every request carries,
        # so schemathesis reaches the batch's body checks instead of stopping at its 401.
        "CROWDTICK_INGEST__AGGREGATORS": '[{name="schemathesis", key="%s", votes_per_sec=0}]' % OPERATOR_KEY,
        "RUST_LOG": "warn",
    }
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(binary), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data / "d"),
             "--partitions", "2"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=data,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if http("GET", f"{base}/healthz")[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"crowdtick serve did not start:\n{log_path.read_text()}", pytrace=False)
            time.sleep(0.2)
        # The old-API user whose Basic credentials go on every request.
        status, body = http("POST", f"{base}/api/register/",
                            {"username": SEED_USER, "password": SEED_PASSWORD,
                             "email": "st@example.com"})
        assert status == 201, body
        # Polls that exist, in each state, so ids that schemathesis picks often name one.
        op = {"X-Api-Key": OPERATOR_KEY}
        for poll in (
            {"title": "open", "options": ["a", "b"], "open": True},
            {"title": "multi", "options": ["a", "b", "c"], "max_choices": 2, "open": True},
            {"title": "draft", "options": ["a", "b"]},
            {"title": "embargoed", "options": ["a", "b"], "open": True, "visibility": "on_reveal"},
        ):
            status, body = http("POST", f"{base}/v1/polls", poll, op)
            assert status == 201, body
        yield base, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_schemathesis(base: str, report_dir: Path, checks: list[str], mode: str) -> dict:
    st = Path(os.environ.get("VIRTUAL_ENV", "")) / "bin" / "st"
    if not st.exists():
        st = Path(__import__("sys").executable).with_name("st")
    basic = base64.b64encode(f"{SEED_USER}:{SEED_PASSWORD}".encode()).decode()
    report = report_dir / f"report-{mode}.json"
    cmd = [
        str(st), "run", f"{base}/openapi.json",
        "--checks", ",".join(checks),
        "--mode", mode,
        "--seed", str(SEED),
        "--generation-deterministic",
        "--max-examples", str(EXAMPLES),
        "--workers", "1",
        "--request-timeout", "10",
        "--header", f"X-Api-Key: {OPERATOR_KEY}",
        "--header", f"Authorization: Basic {basic}",
        "--exclude-path", "/v1/polls/{id}/sse",
        "--report", "json", "--report-json-path", str(report),
        "--no-color",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=report_dir)
    return {"exit": done.returncode, "output": done.stdout + done.stderr, "report": report}


def test_schemathesis_finds_no_server_error_and_no_schema_violation(server, tmp_path):
    base, log_path = server
    run = run_schemathesis(base, tmp_path, STRICT_CHECKS + ["positive_data_acceptance"], "all")
    output = run["output"]
    assert run["report"].exists(), f"schemathesis wrote no report:\n{output[-5000:]}"
    report = json.loads(run["report"].read_text())
    context = f"\n--- schemathesis output (tail) ---\n{output[-15000:]}"
    assert report["complete"], f"the run did not finish: {report['stop_reason']}{context}"
    assert report["operations"]["tested"] >= 30, f"too few operations tested: {report['operations']}{context}"
    assert report["test_cases"]["generated"] >= 500, f"too few cases: {report['test_cases']}{context}"
    assert report["errors"] == [], f"requests that errored (dropped connection, timeout): {report['errors']}{context}"
    unexpected = []
    for group in report["failures"]:
        if group["type"] == "RejectedPositiveData":
            undocumented = [op for op in group["operations"] if op not in DELIBERATE_REFUSALS]
            if undocumented:
                unexpected.append({**group, "operations": undocumented})
        elif group["type"] == "AcceptedNegativeData":
            pending = [op for op in group["operations"]
                       if op in PENDING_NEGATIVE_ACCEPTANCE and PENDING_NEGATIVE_ACCEPTANCE[op](base)]
            rest = [op for op in group["operations"] if op not in pending]
            if pending:
                print(f"accepted on purpose (its probe still shows why): {pending}")
            if rest:
                unexpected.append({**group, "operations": rest})
        else:
            unexpected.append(group)
    assert unexpected == [], f"failures: {json.dumps(unexpected, indent=2)}{context}"
    # The server lived through it.
    assert http("GET", f"{base}/healthz")[0] == 200, log_path.read_text()[-5000:]
    assert "panicked" not in log_path.read_text(), log_path.read_text()[-5000:]
