#!/usr/bin/env python3
"""A tiny webhook receiver for the fan-out hub example: prints every request it gets.

    python3 examples/fanout/receiver.py [--port 9000] [--secret whsec_...] [--fail-first N]

It verifies Standard Webhooks signatures when given the subscriber's secret, and with
--fail-first N answers 500 to the first N attempts of each delivery (by Idempotency-Key),
to show retries carrying the same key. Standard library only; binds 127.0.0.1.
"""

import argparse
import base64
import hashlib
import hmac
import json
import sys
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def signature_ok(secret, headers, body):
    """Whether webhook-signature is HMAC-SHA256 over "id.timestamp.body" with the secret."""
    key = base64.b64decode(secret[len("whsec_"):]) if secret.startswith("whsec_") else secret.encode()
    signed = f"{headers.get('webhook-id')}.{headers.get('webhook-timestamp')}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    sent = [s.split(",", 1)[-1] for s in headers.get("webhook-signature", "").split()]
    return any(hmac.compare_digest(expected, s) for s in sent)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret", help="the subscriber's secret, to verify signatures")
    parser.add_argument("--fail-first", type=int, default=0, metavar="N")
    args = parser.parse_args()
    attempts = Counter()

    class Handler(BaseHTTPRequestHandler):
        def handle_any(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            key = self.headers.get("Idempotency-Key", "")
            attempts[key] += 1
            status = 500 if attempts[key] <= args.fail_first else 200
            signed = "webhook-signature" in self.headers
            check = ""
            if signed and args.secret:
                check = " signature ok" if signature_ok(args.secret, self.headers, body) else " SIGNATURE BAD"
            try:
                shown = json.dumps(json.loads(body or b"{}"), sort_keys=True)
            except ValueError:
                shown = repr(body[:200])
            print(f"{self.command} {self.path} key={key} attempt={attempts[key]} -> {status}"
                  f"{' signed' if signed else ''}{check} body={shown}", flush=True)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_PUT = do_PATCH = do_DELETE = do_GET = handle_any

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"receiver listening on http://127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
