"""An HTTP/1.1 client process for the end-to-end tests: COUNT keep-alive GETs of PATH to TARGET with the given
headers, one JSON line per response: {"status": N}. Its pid is what the agent must name."""
import argparse
import http.client
import json
import os
import time

parser = argparse.ArgumentParser()
parser.add_argument("--target", required=True)
parser.add_argument("--path", required=True)
parser.add_argument("--count", type=int, default=1)
parser.add_argument("--header", action="append", default=[])
args = parser.parse_args()
host, port = args.target.rsplit(":", 1)
headers = dict(h.split("=", 1) for h in args.header)
conn = http.client.HTTPConnection(host, int(port), timeout=10)
for _ in range(args.count):
    conn.request("GET", args.path, headers=headers)
    response = conn.getresponse()
    response.read()
    print(json.dumps({"status": response.status}), flush=True)
conn.close()
# Stay alive a moment (see grpc_peer.linger): the agent reads /proc/<pid> of the process that connected.
time.sleep(float(os.environ.get("GRAYSCOPE_PEER_LINGER_S", "0")))
