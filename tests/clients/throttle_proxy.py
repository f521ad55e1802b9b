#!/usr/bin/env python3
"""An HTTP proxy in front of a local Kinesis that throttles like the real service.

kinesalite never throttles, so the tests put this between sluice and it: every Nth request of
the named operations (X-Amz-Target `Kinesis_20131202.<Operation>`) is answered with
HTTP 400 `ProvisionedThroughputExceededException`, as AWS answers a shard read or written
over its limits; the rest is forwarded unchanged.

    throttle_proxy.py LISTEN_PORT TARGET_PORT EVERY OPERATION[,OPERATION...] COUNT_FILE

Binds 127.0.0.1 only; exits when its standard input closes (so a killed test leaves no proxy
behind). The number of throttled requests is written to COUNT_FILE after each one.
"""

import http.client
import http.server
import sys
import threading

listen_port, target_port, every = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
operations = set(sys.argv[4].split(","))
count_file = sys.argv[5]
lock = threading.Lock()
seen = {"requests": 0, "throttled": 0}


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        operation = self.headers.get("X-Amz-Target", "").rsplit(".", 1)[-1]
        throttle = False
        if operation in operations:
            with lock:
                seen["requests"] += 1
                throttle = seen["requests"] % every == 0
                if throttle:
                    seen["throttled"] += 1
                    with open(count_file, "w") as f:
                        f.write(str(seen["throttled"]))
        if throttle:
            reply = b'{"__type":"ProvisionedThroughputExceededException","message":"Rate exceeded for shard"}'
            self.send_response(400)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)
            return
        upstream = http.client.HTTPConnection("127.0.0.1", target_port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        upstream.request("POST", self.path, body=body, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        self.send_response(response.status)
        for k, v in response.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        upstream.close()


server = http.server.ThreadingHTTPServer(("127.0.0.1", listen_port), Proxy)
server.daemon_threads = True
threading.Thread(target=server.serve_forever, daemon=True).start()
sys.stdin.read()
server.shutdown()
