"""A real gRPC peer (grpcio) for the end-to-end tests: a server that answers any method and a client.

serve: listens on 127.0.0.1:0, prints "PORT <n>", answers every unary call with JSON of the method and the
       metadata it received; `x-want-status: NOT_FOUND` (any status name) makes it fail the call with that status,
       and `x-want-bytes: N` pads the answer with N bytes.
call:  makes COUNT unary calls of METHOD to TARGET with the given metadata and prints one JSON line per call:
       {"code": "<status name>", "body": <the server's JSON or null>}.
"""
import argparse
import os
import time
import json
import sys
from concurrent import futures

import grpc


class AnyMethod(grpc.GenericRpcHandler):
    def service(self, details):
        def handle(request, context):
            metadata = [[k, v] for k, v in context.invocation_metadata()]
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
    with grpc.insecure_channel(args.target) as channel:
        stub = channel.unary_unary(args.method)
        for _ in range(args.count):
            try:
                body = stub(b"ping", metadata=metadata, timeout=10)
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
