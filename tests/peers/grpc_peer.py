"""A real gRPC peer (grpcio) for the end-to-end tests: a server that answers any method and a client.

serve: listens on 127.0.0.1:0, prints "PORT <n>", answers every unary call with JSON of the method and the
       metadata it received; `x-want-status: NOT_FOUND` (any status name) makes it fail the call with that status,
       `x-want-bytes: N` pads the answer with N bytes, and `x-want-delay-ms: N` waits N ms before answering.
       A call with `x-want-messages: N` is server-streaming: N messages, then the status (`x-want-status`, else OK),
       each message after the delay.
call:  makes COUNT unary calls of METHOD to TARGET with the given metadata and prints one JSON line per call:
       {"code": "<status name>", "body": <the server's JSON or null>}. With --stream, server-streaming calls, and
       "messages" (how many came) in each line; --cancel-after N cancels each after its Nth message, and
       --cancel-after-ms N after N ms. --timeout S sets the deadline.
"""
import argparse
import os
import time
import json
import sys
import threading
from concurrent import futures

import grpc


class AnyMethod(grpc.GenericRpcHandler):
    def service(self, details):
        asked = dict(details.invocation_metadata)
        delay = int(asked.get("x-want-delay-ms", "0")) / 1000

        def stream(request, context):
            for n in range(int(asked["x-want-messages"])):
                time.sleep(delay)
                if not context.is_active():
                    return
                yield json.dumps({"message": n}).encode()
            want = asked.get("x-want-status")
            if want:
                context.abort(getattr(grpc.StatusCode, want), "requested by the test")

        if "x-want-messages" in asked:
            return grpc.unary_stream_rpc_method_handler(stream)

        def handle(request, context):
            metadata = [[k, v] for k, v in context.invocation_metadata()]
            time.sleep(delay)
            want = dict(context.invocation_metadata()).get("x-want-status")
            if want:
                context.abort(getattr(grpc.StatusCode, want), "requested by the test")
            answer = {"method": details.method, "metadata": metadata}
            pad = int(dict(context.invocation_metadata()).get("x-want-bytes", "0"))
            if pad:
                answer["pad"] = "p" * pad
            return json.dumps(answer).encode()

        return grpc.unary_unary_rpc_method_handler(handle)


def serve():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((AnyMethod(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    server.wait_for_termination()


def call(args):
    metadata = [tuple(m.split("=", 1)) for m in args.metadata]
    options = [("grpc.default_authority", args.authority)] if args.authority else []
    with grpc.insecure_channel(args.target, options=options) as channel:
        if args.stream:
            stub = channel.unary_stream(args.method)
            for _ in range(args.count):
                call = stub(b"ping", metadata=metadata, timeout=args.timeout)
                timer = threading.Timer(args.cancel_after_ms / 1000, call.cancel)
                if args.cancel_after_ms:
                    timer.start()
                messages = 0
                try:
                    for _message in call:
                        messages += 1
                        if messages == args.cancel_after:
                            call.cancel()
                    code = "OK"
                except grpc.RpcError as e:
                    code = e.code().name
                timer.cancel()
                print(json.dumps({"code": code, "body": None, "messages": messages}), flush=True)
            return
        stub = channel.unary_unary(args.method)
        for _ in range(args.count):
            try:
                body = stub(b"ping", metadata=metadata, timeout=args.timeout)
                print(json.dumps({"code": "OK", "body": json.loads(body)}), flush=True)
            except grpc.RpcError as e:
                print(json.dumps({"code": e.code().name, "body": None}), flush=True)


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("serve")
    c = sub.add_parser("call")
    c.add_argument("--target", required=True)
    c.add_argument("--method", required=True)
    c.add_argument("--count", type=int, default=1)
    c.add_argument("--metadata", action="append", default=[])
    c.add_argument("--stream", action="store_true")
    c.add_argument("--authority")
    c.add_argument("--cancel-after", type=int, default=0)
    c.add_argument("--cancel-after-ms", type=int, default=0)
    c.add_argument("--timeout", type=float, default=10)
    args = parser.parse_args()
    if args.cmd == "serve":
        serve()
    else:
        call(args)


def linger():
    """Stay alive GRAYSCOPE_PEER_LINGER_S seconds after the work: a test that checks which process the agent names
    needs /proc/<pid> readable when the agent reads it, which a process that has exited no longer is."""
    time.sleep(float(os.environ.get("GRAYSCOPE_PEER_LINGER_S", "0")))


if __name__ == "__main__":
    rc = main()
    linger()
    sys.exit(rc)
