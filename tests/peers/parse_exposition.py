"""Parses a Prometheus text exposition from stdin with the reference parser (prometheus_client) and prints one
line per sample: name, labels as sorted JSON, value. Exits non-zero, with the parser's error, if it does not parse."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        print(json.dumps([s.name, dict(sorted(s.labels.items())), s.value]))
