"""Demo service and traffic for the canary tests (tests/tests/canary.rs): grpcio and the standard library.

serve: a gRPC server answering any method and an HTTP/1.1 server answering any GET, both on 127.0.0.1:0; prints
       "PORTS <grpc> <http>". Both obey the request: `x-delay-ms: N` answers after N ms; `x-want-status: NAME` fails
       the gRPC call with that status; `x-respond-status: NNN` answers HTTP with that status.
drive: runs the phases of a JSON plan (argument --plan) against TARGET, one after the other, and prints one JSON line
       per phase: {"start": unix s, "end": unix s, "calls": {stream name: calls}, "failed": {stream name: calls}}.
       A phase is {"seconds": S, "streams": [stream]}; a stream is {"name", "kind": "grpc"|"http", "path",
       "version", "delay_ms", "fail_every" (0: never), "rate" (calls/s), "threads", and optionally "headers" (sent
       with every call, e.g. a tenant's)}. Each thread paces its calls
       (rate / threads per second), the threads spread over one period, and the stream fails exactly every
       fail_every-th of its calls in that order, so the failure ratio is exact in any window of whole calls.
       "extras": requests sent once before the first phase, [{"path", "headers": {..}}], over HTTP.
"""
import argparse
import http.client
import http.server
import json
import sys
import threading
import time
from concurrent import futures

import grpc


class AnyMethod(grpc.GenericRpcHandler):
    def service(self, details):
        def handle(request, context):
            md = dict(context.invocation_metadata())
            time.sleep(int(md.get("x-delay-ms", "0")) / 1000)
            want = md.get("x-want-status")
            if want:
                context.abort(getattr(grpc.StatusCode, want), "requested by the test")
            return b"ok"

        return grpc.unary_unary_rpc_method_handler(handle)


class Http(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes; with Nagle on, the second waits for a delayed ACK (40 ms).
    disable_nagle_algorithm = True

    def do_GET(self):
        time.sleep(int(self.headers.get("x-delay-ms", "0")) / 1000)
        status = int(self.headers.get("x-respond-status", "200"))
        self.send_response(status)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def serve():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    server.add_generic_rpc_handlers((AnyMethod(),))
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Http)
    web.daemon_threads = True
    threading.Thread(target=web.serve_forever, daemon=True).start()
    print(f"PORTS {grpc_port} {web.server_address[1]}", flush=True)
    server.wait_for_termination()


def run_thread(target, stream, until, index, calls, failed, lock):
    period = stream["threads"] / stream["rate"]
    headers = {"x-gray-version": stream["version"], "x-delay-ms": str(stream.get("delay_ms", 0))}
    headers.update(stream.get("headers", {}))
    fail_every = stream.get("fail_every", 0)
    if stream["kind"] == "grpc":
        channel = grpc.insecure_channel(target)
        call = channel.unary_unary(stream["path"])
    else:
        host, port = target.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
    n = 0
    # Threads of one stream start spread over one period, so calls are evenly spaced.
    next_at = time.time() + period * index / stream["threads"]
    while next_at < until:
        time.sleep(max(0.0, next_at - time.time()))
        n += 1
        # The stream's call number in paced order: failures evenly spaced, not a burst of one per thread.
        fail = fail_every and (stream["threads"] * (n - 1) + index + 1) % fail_every == 0
        h = dict(headers)
        ok = True
        if stream["kind"] == "grpc":
            if fail:
                h["x-want-status"] = "UNAVAILABLE"
            try:
                call(b"ping", metadata=list(h.items()), timeout=10)
            except grpc.RpcError:
                ok = False
        else:
            if fail:
                h["x-respond-status"] = "503"
            conn.request("GET", stream["path"], headers=h)
            resp = conn.getresponse()
            resp.read()
            ok = resp.status < 500
        with lock:
            calls[stream["name"]] = calls.get(stream["name"], 0) + 1
            if not ok:
                failed[stream["name"]] = failed.get(stream["name"], 0) + 1
        next_at += period
    if stream["kind"] == "grpc":
        channel.close()
    else:
        conn.close()


def drive(args):
    plan = json.loads(args.plan)
    host, port = args.target.rsplit(":", 1)
    for extra in plan.get("extras", []):
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", extra["path"], headers=extra.get("headers", {}))
        conn.getresponse().read()
        conn.close()
    for phase in plan["phases"]:
        start = time.time()
        until = start + phase["seconds"]
        calls, failed, lock = {}, {}, threading.Lock()
        threads = [
            threading.Thread(target=run_thread, args=(args.target, s, until, i, calls, failed, lock))
            for s in phase["streams"]
            for i in range(s["threads"])
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(json.dumps({"start": start, "end": time.time(), "calls": calls, "failed": failed}), flush=True)


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("serve")
    d = sub.add_parser("drive")
    d.add_argument("--target", required=True)
    d.add_argument("--plan", required=True)
    args = parser.parse_args()
    if args.cmd == "serve":
        serve()
    else:
        drive(args)


if __name__ == "__main__":
    sys.exit(main())
