"""Locust scenarios for CrowdTick.

Two user classes:

* ``SeedApiUser`` speaks the old Django API (``shared/seed-api.md``), as the seed project's own
  Locust file did: register (session cookie), create a poll now and then, vote once per poll
  (a second vote must be refused with "already voted"), read results.
* ``V1User`` speaks ``/v1`` (``docs/API.md``): single votes with a voter id and a vote id
  (duplicates and same-vote-id retries mixed in), a batch now and then, results reads.
  Its polls are created once per Locust process through the operator API.

Run (against a local server only; the file refuses other hosts unless CROWDTICK_ALLOW_REMOTE=1):

    pip install locust
    crowdtick serve --data-dir /tmp/ct --listen 127.0.0.1:8080 &
    locust -f loadtest/locust/locustfile.py --host http://127.0.0.1:8080 \\
        --headless -u 1000 -r 100 -t 60s SeedApiUser
    locust -f loadtest/locust/locustfile.py --host http://127.0.0.1:8080 \\
        --headless -u 200 -r 50 -t 60s V1User

Environment: CROWDTICK_OPERATOR_KEY (default dev-operator-key), CROWDTICK_AGGREGATOR_KEY (default
dev-aggregator-key, sent with batches), LOCUST_V1_POLLS (polls V1User
votes in, default 4), LOCUST_V1_VOTERS (distinct voters, default 100000), LOCUST_DUPLICATE_SHARE
(default 0.2), LOCUST_RETRY_SHARE (default 0.05), LOCUST_BATCH (votes per batch request, default 100).

Locust measures closed-loop latency from the Python side: for throughput beyond a few thousand
votes per second, and for exact tally checks, use ``crowdtick loadgen`` (same repository).
"""

import ipaddress
import json
import os
import random
import socket
import threading
import uuid
from urllib.parse import urlparse

from locust import HttpUser, between, events, task

OPERATOR_KEY = os.environ.get("CROWDTICK_OPERATOR_KEY", "dev-operator-key")
# Batches are for aggregators, each with its own key (the server's `ingest.aggregators`).
AGGREGATOR_KEY = os.environ.get("CROWDTICK_AGGREGATOR_KEY", "dev-aggregator-key")
V1_POLLS = int(os.environ.get("LOCUST_V1_POLLS", "4"))
V1_VOTERS = int(os.environ.get("LOCUST_V1_VOTERS", "100000"))
DUPLICATE_SHARE = float(os.environ.get("LOCUST_DUPLICATE_SHARE", "0.2"))
RETRY_SHARE = float(os.environ.get("LOCUST_RETRY_SHARE", "0.05"))
BATCH = int(os.environ.get("LOCUST_BATCH", "100"))


@events.init.add_listener
def _loopback_only(environment, **_kwargs):
    """Refuse to load anything but this machine unless explicitly allowed."""
    host = environment.host or ""
    if not host or os.environ.get("CROWDTICK_ALLOW_REMOTE") == "1":
        return
    name = urlparse(host).hostname or ""
    try:
        addrs = {info[4][0] for info in socket.getaddrinfo(name, None)}
    except socket.gaierror as e:
        raise SystemExit(f"cannot resolve {name}: {e}")
    if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs):
        raise SystemExit(
            f"{host} is not a loopback address; set CROWDTICK_ALLOW_REMOTE=1 to load another machine"
        )


# --------------------------------------------------------------------------------------------
# The seed API (Django compatibility)
# --------------------------------------------------------------------------------------------

_seed_polls = []  # (id, [labels]) created by any SeedApiUser of this process
_seed_lock = threading.Lock()


class SeedApiUser(HttpUser):
    """A registered user of the old API: creates polls, votes once in each, reads results."""

    wait_time = between(0.5, 2.0)

    def on_start(self):
        self.username = f"locust-{uuid.uuid4().hex[:12]}"
        self.voted = set()
        with self.client.post(
            "/api/register/",
            json={
                "username": self.username,
                "email": f"{self.username}@example.invalid",
                "password": "correct horse battery",
            },
            name="/api/register/",
            catch_response=True,
        ) as r:
            if r.status_code != 201 or "sessionid" not in self.client.cookies:
                r.failure(f"register: {r.status_code} {r.text[:200]}")
            else:
                r.success()
        if not _seed_polls:
            self.create_poll()

    @task(1)
    def create_poll(self):
        labels = [f"Option {i}" for i in range(1, random.randint(2, 5) + 1)]
        with self.client.post(
            "/api/polls/",
            json={"title": f"Locust poll {uuid.uuid4().hex[:6]}", "options": {l: 0 for l in labels}},
            name="/api/polls/",
            catch_response=True,
        ) as r:
            if r.status_code != 201:
                r.failure(f"create poll: {r.status_code} {r.text[:200]}")
                return
            body = r.json()
            if sorted(body.get("options", {})) != sorted(labels):
                r.failure(f"create poll: options {body.get('options')}")
                return
            r.success()
            with _seed_lock:
                _seed_polls.append((body["id"], labels))
                del _seed_polls[:-50]  # vote in recent polls

    @task(10)
    def vote(self):
        if not _seed_polls:
            return
        poll_id, labels = random.choice(_seed_polls)
        again = poll_id in self.voted
        with self.client.post(
            f"/api/polls/{poll_id}/vote/",
            json={"choice": random.choice(labels)},
            name="/api/polls/[id]/vote/",
            catch_response=True,
        ) as r:
            if r.status_code == 202 and not again:
                self.voted.add(poll_id)
                r.success()
            elif r.status_code == 400 and "already voted" in r.text:
                # The promised behaviour for a second vote; an error only if it was our first.
                if again:
                    r.success()
                else:
                    r.failure("first vote refused as 'already voted'")
            elif r.status_code == 202 and again:
                r.failure("a second vote by the same user was accepted")
            else:
                r.failure(f"vote: {r.status_code} {r.text[:200]}")

    @task(5)
    def results(self):
        if not _seed_polls:
            return
        poll_id, labels = random.choice(_seed_polls)
        with self.client.get(
            f"/api/polls/{poll_id}/results/", name="/api/polls/[id]/results/", catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"results: {r.status_code} {r.text[:200]}")
            elif sorted(r.json()) != sorted(labels):
                r.failure(f"results: labels {list(r.json())}")
            else:
                r.success()


# --------------------------------------------------------------------------------------------
# The /v1 API
# --------------------------------------------------------------------------------------------

_v1_polls = []  # (id, option count), created once per process
_v1_lock = threading.Lock()
_run = uuid.uuid4().hex[:8]


def _v1_setup(client):
    with _v1_lock:
        if _v1_polls:
            return
        for i in range(V1_POLLS):
            r = client.post(
                "/v1/polls",
                json={
                    "title": f"Locust v1 poll {i + 1} ({_run})",
                    "options": ["A", "B", "C", "D"],
                    "max_choices": 1,
                    "visibility": "live",
                    "open": True,
                },
                headers={"Authorization": f"Bearer {OPERATOR_KEY}"},
                name="/v1/polls (setup)",
            )
            if r.status_code != 201:
                raise RuntimeError(f"creating a /v1 poll: {r.status_code} {r.text[:200]}")
            _v1_polls.append((r.json()["id"], 4))


class V1User(HttpUser):
    """A vote client of /v1: votes (with duplicates and retries), batches, results."""

    wait_time = between(0.0, 0.05)

    def on_start(self):
        _v1_setup(self.client)
        self.sent = []  # recent bodies, for same-vote-id retries
        self.voters = []  # recent (poll, voter) pairs, for duplicates

    def _vote_body(self):
        draw = random.random()
        if draw < RETRY_SHARE and self.sent:
            return random.choice(self.sent), "retry"
        if draw < RETRY_SHARE + DUPLICATE_SHARE and self.voters:
            poll_id, voter = random.choice(self.voters)
            kind = "duplicate"
        else:
            poll_id, _ = random.choice(_v1_polls)
            voter = f"{_run}-{random.randrange(V1_VOTERS)}"
            kind = "vote"
        body = {
            "poll_id": poll_id,
            "option_id": random.randrange(4),
            "voter_id": voter,
            "vote_id": f"{_run}-{uuid.uuid4().hex[:16]}",
        }
        self.voters.append((poll_id, voter))
        del self.voters[:-1000]
        self.sent.append(body)
        del self.sent[:-100]
        return body, kind

    @task(20)
    def vote(self):
        body, kind = self._vote_body()
        with self.client.post(
            "/v1/votes", json=body, name=f"/v1/votes ({kind})", catch_response=True
        ) as r:
            if r.status_code == 202 and r.json().get("vote_id") == body["vote_id"]:
                r.success()
            elif r.status_code in (429, 503):
                r.failure(f"{r.status_code} (Retry-After {r.headers.get('Retry-After')})")
            else:
                r.failure(f"vote: {r.status_code} {r.text[:200]}")

    @task(1)
    def batch(self):
        votes = [self._vote_body()[0] for _ in range(BATCH)]
        with self.client.post(
            "/v1/votes/batch?results=rejected",
            data=json.dumps({"votes": votes}),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {AGGREGATOR_KEY}"},
            name="/v1/votes/batch",
            catch_response=True,
        ) as r:
            if r.status_code != 200:
                r.failure(f"batch: {r.status_code} {r.text[:200]}")
                return
            answer = r.json()
            if answer.get("accepted", 0) + answer.get("rejected", 0) != len(votes):
                r.failure(f"batch: {answer.get('accepted')} + {answer.get('rejected')} != {len(votes)}")
            elif answer.get("rejected"):
                r.failure(f"batch: {answer['rejected']} votes rejected: {answer['results'][:3]}")
            else:
                r.success()

    @task(4)
    def results(self):
        poll_id, options = random.choice(_v1_polls)
        with self.client.get(
            f"/v1/polls/{poll_id}/results", name="/v1/polls/[id]/results", catch_response=True
        ) as r:
            if r.status_code != 200 or len(r.json().get("counts", [])) != options:
                r.failure(f"results: {r.status_code} {r.text[:200]}")
            else:
                r.success()
