"""Introspection of a running marketplace by graphql-core (PyPI), the Python
port of the reference implementation: `get_introspection_query()` with its
default options, then with descriptions, specified_by_url,
directive_is_repeatable, schema_description and input_value_deprecation
(and one_of where this graphql-core has it). Each answer must have no errors
and must build with `build_client_schema`, and the built schema must have
`Query.listings`. Any refusal (such as a depth or complexity limit) fails.

Usage: python introspect.py http://127.0.0.1:8080/graphql
"""

from __future__ import annotations

import inspect
import json
import sys

import graphql
import requests


def variants() -> list[tuple[str, dict[str, bool]]]:
    everything = {
        "descriptions": True,
        "specified_by_url": True,
        "directive_is_repeatable": True,
        "schema_description": True,
        "input_value_deprecation": True,
    }
    if "one_of" in inspect.signature(graphql.get_introspection_query).parameters:
        everything["one_of"] = True
    return [
        ("default options", {}),
        (f"every option ({', '.join(everything)})", everything),
    ]


def check(url: str, name: str, options: dict[str, bool]) -> None:
    response = requests.post(
        url,
        json={"query": graphql.get_introspection_query(**options), "operationName": "IntrospectionQuery"},
        headers={"Accept": "application/graphql-response+json, application/json"},
        timeout=60,
    )
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"HTTP {response.status_code}, not JSON: {response.text[:300]}") from None
    if not response.ok or body.get("errors") or not body.get("data"):
        refusal = json.dumps(body.get("errors", body))[:400]
        raise AssertionError(f"HTTP {response.status_code}, refused: {refusal}")
    schema = graphql.build_client_schema(body["data"])
    query = schema.query_type
    if query is None or "listings" not in query.fields:
        raise AssertionError(f"the built schema has no Query.listings (query type: {query})")
    types = [t for t in schema.type_map if not t.startswith("__")]
    listings = query.fields["listings"].type
    print(f"ok    {name}: build_client_schema built {len(types)} types; Query.listings: {listings}")


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python introspect.py <graphql-url>", file=sys.stderr)
        return 2
    url = sys.argv[1]
    print(f"== graphql-core {graphql.__version__} introspection against {url}")
    failures = 0
    for name, options in variants():
        try:
            check(url, name, options)
        except Exception as e:  # noqa: BLE001 - any failure is reported, then fails the run
            print(f"error {name}: {e}")
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
