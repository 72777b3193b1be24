"""Submit briefs from a CSV to Laneway's HTTP API, wait for them, and download the images.

    python examples/submit_and_wait.py briefs.csv --url http://127.0.0.1:8000 --token lw_… --out images/

The CSV has a header row with `prompt` and `intent`, and optionally `expected_text`, `seed`,
`steps`, `width`, `height`. Each row is submitted with an Idempotency-Key made from its content,
so running the script again after a failure never submits a brief twice. A brief refused for
now (429) is retried after its Retry-After. The script then polls each job until it finishes
(or, with --webhook-port and --webhook-secret, waits for the signed `job.succeeded` /
`job.failed` deliveries of a webhook endpoint pointed at this machine) and saves each image.
Exit status: 0 if every job succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import hmac
import json
import queue
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx

TERMINAL = {"succeeded", "failed", "cancelled", "rejected"}
NUMBERS = ("seed", "steps", "width", "height")


def read_briefs(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    briefs = []
    for number, row in enumerate(rows, start=2):
        if not row.get("prompt") or not row.get("intent"):
            sys.exit(f"{path}:{number}: every row needs a prompt and an intent")
        brief = {key: row[key] for key in ("prompt", "intent", "expected_text") if row.get(key)}
        for key in NUMBERS:
            if row.get(key):
                brief[key] = int(row[key])
        briefs.append(brief)
    return briefs


def submit(client: httpx.Client, brief: dict) -> dict:
    key = hashlib.sha256(json.dumps(brief, sort_keys=True).encode()).hexdigest()
    while True:
        response = client.post("/api/v1/jobs", json=brief, headers={"Idempotency-Key": key})
        if response.status_code == 429:
            wait = int(response.headers.get("Retry-After", "1"))
            print(f"  busy: {response.json()['detail']} (retrying in {wait} s)")
            time.sleep(wait)
            continue
        if response.status_code != 202:
            sys.exit(f"refused: {response.status_code} {response.text}")
        return response.json()


def verify(secret: str, headers, body: bytes) -> bool:
    """A Standard Webhooks signature check: HMAC-SHA256 of id.timestamp.body with the endpoint's secret."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    if abs(time.time() - int(headers["webhook-timestamp"])) > 300:
        return False
    return any(hmac.compare_digest(f"v1,{expected}", s) for s in headers["webhook-signature"].split())


def webhook_events(port: int, secret: str) -> queue.Queue:
    events: queue.Queue = queue.Queue()

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            ok = verify(secret, self.headers, body)
            self.send_response(204 if ok else 401)
            self.end_headers()
            if ok:
                events.put(json.loads(body))

        def log_message(self, *args):
            pass

    server = HTTPServer(("0.0.0.0", port), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return events


def wait_polling(client: httpx.Client, ids: list[int], every: float) -> dict[int, dict]:
    done: dict[int, dict] = {}
    while len(done) < len(ids):
        for job_id in ids:
            if job_id not in done:
                job = client.get(f"/api/v1/jobs/{job_id}").raise_for_status().json()
                if job["state"] in TERMINAL:
                    done[job_id] = job
                    print(f"  job {job_id}: {job['state']}")
        if len(done) < len(ids):
            time.sleep(every)
    return done


def wait_webhooks(client: httpx.Client, ids: list[int], events: queue.Queue, timeout: float) -> dict[int, dict]:
    done: dict[int, dict] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(ids):
        try:
            event = events.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            sys.exit(f"no webhook for jobs {sorted(set(ids) - set(done))} within {timeout} s")
        job_id = event.get("data", {}).get("job", {}).get("id", event.get("data", {}).get("id"))
        if job_id in ids and job_id not in done:
            done[job_id] = client.get(f"/api/v1/jobs/{job_id}").raise_for_status().json()
            print(f"  job {job_id}: {event['type']}")
    return done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", type=Path)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--token", required=True, help="a personal API token (console → API tokens)")
    parser.add_argument("--out", type=Path, default=Path("images"))
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between polls")
    parser.add_argument("--webhook-port", type=int, help="wait for webhook deliveries on this port instead of polling")
    parser.add_argument("--webhook-secret", help="the webhook endpoint's secret (whsec_…)")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()

    briefs = read_briefs(args.csv)
    events = webhook_events(args.webhook_port, args.webhook_secret) if args.webhook_port else None
    headers = {"Authorization": f"Bearer {args.token}"}
    with httpx.Client(base_url=args.url, headers=headers, timeout=30) as client:
        print(f"Submitting {len(briefs)} briefs to {args.url}")
        jobs = [submit(client, brief) for brief in briefs]
        for job in jobs:
            print(f"  job {job['id']}: {job['admission']['decision']} on lane {job['lane']}")
        ids = [job["id"] for job in jobs]
        done = wait_webhooks(client, ids, events, args.timeout) if events else wait_polling(client, ids, args.poll)
        args.out.mkdir(parents=True, exist_ok=True)
        for job_id, job in sorted(done.items()):
            for image in job["images"]:
                target = args.out / f"job-{job_id}-{image['stage']}.png"
                target.write_bytes(client.get(image["url"]).raise_for_status().content)
                print(f"  saved {target}")
    failed = [job_id for job_id, job in done.items() if job["state"] != "succeeded"]
    print(f"{len(done) - len(failed)} succeeded, {len(failed)} did not" + (f": {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
