"""Scrapes a /metrics endpoint as Prometheus does (its Accept header) and parses the body with the reference parser
(prometheus_client) of the format the response's content-type declares: OpenMetrics for
`application/openmetrics-text`, else the classic text format. Prints the content-type, then one JSON line per
metric family: [name, type, [sample names]]. Exits non-zero, with the parser's error, if the body does not parse."""
import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families as text_families

# Prometheus 3's default scrape_protocols, in its order of preference.
ACCEPT = (
    "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)

request = urllib.request.Request(sys.argv[1], headers={"Accept": ACCEPT})
with urllib.request.urlopen(request, timeout=30) as response:
    content_type = response.headers.get("content-type", "")
    body = response.read().decode("utf-8")
print(content_type)
parse = openmetrics_families if content_type.startswith("application/openmetrics-text") else text_families
for family in parse(body):
    print(json.dumps([family.name, family.type, [s.name for s in family.samples]]))
