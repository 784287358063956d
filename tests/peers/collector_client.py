"""A grpcio client of the agent's Collector service, with grpcio's default channel options (so `:authority` is the
percent-encoded socket path, as every grpc-core application sends it). It calls every RPC once and prints one JSON
line per RPC: {"rpc": name, "code": status name, "detail": ...}.

The messages are encoded by hand (a few protobuf fields), so the peer needs nothing but grpcio.

usage: collector_client.py SOCKET_PATH SERVICE
       collector_client.py report SOCKET_PATH CLIENT_IP:PORT SERVER_IP:PORT METHOD
         (one outbound call record of test.Greeter/METHOD from CLIENT to SERVER; prints `accepted`)
       collector_client.py list SOCKET_PATH
         (the whole method table, page after page of ListMethods as AIP-158 has a client follow
         `next_page_token`; prints {"code", "detail", "pages", "rows": [[service, gray_version], ...]})
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


def fields(data):
    """The top-level fields of a protobuf message: (number, value) pairs, value an int or bytes."""
    i = 0
    while i < len(data):
        key, i = read_varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = read_varint(data, i)
        elif wire == 2:
            n, i = read_varint(data, i)
            value, i = data[i : i + n], i + n
        elif wire == 1:
            value, i = data[i : i + 8], i + 8
        elif wire == 5:
            value, i = data[i : i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        yield number, value


def read_varint(data, i):
    n, shift = 0, 0
    while True:
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def list_methods(socket):
    """ListMethods page after page (request: page_size 1, page_token 2; response: methods 1, next_page_token 2)."""
    rows, pages, token = [], 0, b""
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        rpc = channel.unary_unary("/grayscope.v1.Collector/ListMethods")
        try:
            while True:
                answer = rpc(field(2, token) if token else b"", timeout=30)
                pages += 1
                token = b""
                for number, value in fields(answer):
                    if number == 1:
                        row = dict(fields(value))
                        rows.append([row.get(2, b"").decode(), row.get(4, b"").decode()])
                    elif number == 2:
                        token = value
                if not token:
                    break
        except grpc.RpcError as e:
            print(json.dumps({"code": e.code().name, "detail": e.details(), "pages": pages, "rows": rows}))
            return
    print(json.dumps({"code": "OK", "detail": "", "pages": pages, "rows": rows}), flush=True)


def main():
    if sys.argv[1] == "report":
        return report_one(*sys.argv[2:6])
    if sys.argv[1] == "list":
        return list_methods(sys.argv[2])
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
