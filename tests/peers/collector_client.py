"""A grpcio client of the agent's Collector service, with grpcio's default channel options (so `:authority` is the
percent-encoded socket path, as every grpc-core application sends it). It calls every RPC once and prints one JSON
line per RPC: {"rpc": name, "code": status name, "detail": ...}.

The messages are encoded by hand (a few protobuf fields), so the peer needs nothing but grpcio.

usage: collector_client.py SOCKET_PATH SERVICE
       collector_client.py report SOCKET_PATH CLIENT_IP:PORT SERVER_IP:PORT METHOD
         (one outbound call record of test.Greeter/METHOD from CLIENT to SERVER; prints `accepted`)
"""
import json
import sys
import threading

import grpc


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(number, value):
    """A length-delimited field (string or message), or a varint field for an int."""
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    if isinstance(value, str):
        value = value.encode()
    return varint(number << 3 | 2) + varint(len(value)) + value


def address(number, text):
    ip, port = text.rsplit(":", 1)
    return field(number, field(1, ip) + field(2, int(port)))


def report_one(socket, client, server, method):
    call = (
        field(1, 2)
        + field(2, "grpc")
        + field(3, f"test.Greeter/{method}")
        + field(6, "test.Greeter")
        + field(8, "OK")
        + address(13, client)
        + address(14, server)
    )
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        answer = channel.unary_unary("/grayscope.v1.Collector/Report")(field(1, "python") + field(2, call), timeout=10)
    print(answer.hex(), flush=True)


def main():
    if sys.argv[1] == "report":
        return report_one(*sys.argv[2:6])
    socket, service = sys.argv[1], sys.argv[2]
    results = []

    def record(rpc, fn):
        try:
            detail = fn()
            results.append({"rpc": rpc, "code": "OK", "detail": detail})
        except grpc.RpcError as e:
            results.append({"rpc": rpc, "code": e.code().name, "detail": e.details()})

    prefix = "/grayscope.v1.Collector/"
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        unary = lambda name: channel.unary_unary(prefix + name)
        # Watch first, so the reported call below reaches it.
        watch = channel.unary_stream(prefix + "Watch")(field(1, service), timeout=30)
        got = {}

        def read_one():
            try:
                got["message"] = next(watch)
            except grpc.RpcError as e:
                got["error"] = e

        reader = threading.Thread(target=read_one)
        reader.start()
        method = field(1, service) + field(2, "Do") + field(5, "v1")
        record(
            "ReportMethodMetadata",
            lambda: unary("ReportMethodMetadata")(field(1, method), timeout=10).hex(),
        )
        # One outbound call record (direction 2) for `service`.
        call = field(1, 2) + field(2, "grpc") + field(3, f"{service}/Do") + field(6, service) + field(8, "OK")

        def report():
            # Watch registers asynchronously: report until the watcher has seen one (or 5 s).
            for _ in range(50):
                answer = unary("Report")(field(1, "python") + field(2, call), timeout=10)
                reader.join(timeout=0.1)
                if not reader.is_alive():
                    break
            return answer.hex()

        record("Report", report)
        reader.join(timeout=20)

        def watched():
            if "error" in got:
                raise got["error"]
            if "message" not in got:
                raise RuntimeError("no Watch message")
            return got["message"].hex()

        try:
            record("Watch", watched)
        except RuntimeError as e:
            results.append({"rpc": "Watch", "code": "NONE", "detail": str(e)})
        watch.cancel()
        record("ListMethods", lambda: unary("ListMethods")(b"", timeout=10).hex())
    for r in results:
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    sys.exit(main())
