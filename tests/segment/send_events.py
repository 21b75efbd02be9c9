#!/usr/bin/env python3
"""Send real Segment SDK calls to a sluice API and print what was sent as JSON.

Used by crates/sluice/tests/segment_sdk.rs: the Rust test starts the app, runs this script with
the app's host and a write key, and checks that every call below landed in the event log with the
right fields. The SDK (segment-analytics-python, import name `segment.analytics`) batches queued
calls and POSTs them to `{host}/v1/batch` with the write key as HTTP Basic username and in the
body, and adds `sentAt` to each batch.

Exit status: 0 when every call was delivered, 1 when the SDK reported an error (on_error fired).
"""

import argparse
import json
import sys
from datetime import datetime, timedelta, timezone

from segment import analytics


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True, help="base URL of the sluice API, e.g. http://127.0.0.1:8080")
    parser.add_argument("--write-key", required=True)
    parser.add_argument("--tag", default="sdk", help="distinguishes ids and names of this run")
    parser.add_argument("--tracks", type=int, default=150, help="extra track calls (more than 100 forces several batches)")
    parser.add_argument("--gzip", action="store_true", help="gzip request bodies (Content-Encoding: gzip)")
    args = parser.parse_args()

    errors = []

    def on_error(error, items):
        errors.append({"error": repr(error), "items": len(items)})

    analytics.write_key = args.write_key
    analytics.host = args.host
    analytics.on_error = on_error
    analytics.gzip = args.gzip
    analytics.max_retries = 1
    analytics.timeout = 10

    tag = args.tag
    user = f"{tag}-user-1"
    sent = []

    def record(kind, result, **expect):
        ok, msg = result
        if not ok:
            errors.append({"error": f"{kind} was not queued"})
        sent.append({"kind": kind, "messageId": msg["messageId"], "timestamp": msg["timestamp"], **expect})

    record(
        "identify",
        analytics.identify(user, {"email": f"{tag}@example.com", "plan": "pro", "seats": 3}),
        userId=user,
        traits={"email": f"{tag}@example.com", "plan": "pro", "seats": 3},
    )
    record(
        "track",
        analytics.track(user, f"{tag} Order Completed", {"revenue": 42.5, "currency": "EUR", "items": ["a", "b"]}),
        userId=user,
        name=f"{tag} Order Completed",
        properties={"revenue": 42.5, "currency": "EUR", "items": ["a", "b"]},
    )
    # An event that happened an hour ago (client-side queueing): the stored timestamp is corrected
    # with the batch's sentAt, which stays close to the client's own time here.
    an_hour_ago = datetime.now(timezone.utc) - timedelta(hours=1)
    record(
        "track",
        analytics.track(user, f"{tag} Late Event", {"late": True}, timestamp=an_hour_ago),
        userId=user,
        name=f"{tag} Late Event",
        properties={"late": True},
    )
    record(
        "page",
        analytics.page(user, category="Docs", name=f"{tag} Pricing", properties={"url": "https://example.com/pricing"}),
        userId=user,
        name=f"{tag} Pricing",
        properties={"url": "https://example.com/pricing", "category": "Docs"},
    )
    record(
        "group",
        analytics.group(user, f"{tag}-org-1", {"name": "Acme", "employees": 120}),
        userId=user,
        groupId=f"{tag}-org-1",
        traits={"name": "Acme", "employees": 120},
    )
    record(
        "alias",
        analytics.alias(f"{tag}-anon-1", user),
        userId=user,
        previousId=f"{tag}-anon-1",
    )
    # Anonymous track: no userId at all.
    record(
        "track",
        analytics.track(anonymous_id=f"{tag}-anon-2", event=f"{tag} Anonymous View", properties={"n": 0}),
        anonymousId=f"{tag}-anon-2",
        name=f"{tag} Anonymous View",
        properties={"n": 0},
    )
    for i in range(args.tracks):
        u = f"{tag}-bulk-{i % 7}"
        record(
            "track",
            analytics.track(u, f"{tag} Bulk", {"i": i}),
            userId=u,
            name=f"{tag} Bulk",
            properties={"i": i},
        )

    analytics.flush()
    analytics.shutdown()

    print(json.dumps({"sent": sent, "errors": errors}))
    if errors:
        print(f"the Segment SDK reported errors: {errors}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
