"""A property-based fuzzer of a running marketplace's GraphQL API.

hypothesis-graphql generates operations from the served schema (queries and
mutations that pass validation, plus a share that each break one schema rule)
and hypothesis drives them, signed in as a BUYER and as a SELLER registered
first through the `register` mutation (and as an ADMIN, given --admin). Before
that, a small marketplace is set up for the generated ids and strings to hit:
listings (published and draft), a funded wallet, a confirmed order and a
delivered one with a pending review. The property: whatever the operation,
the server answers like the contract says —

- never an HTTP 5xx, a dropped connection or a hang (30 s);
- a JSON body with `data` or `errors` (any non-JSON answer must be a 4xx);
- every error has `extensions.code`, one of the contract's codes, and none is
  `INTERNAL`.

Coded refusals (BAD_USER_INPUT, NOT_FOUND, FORBIDDEN, CONFLICT,
RATE_LIMITED, ...) pass: they are the server doing its job.

A failing operation is shrunk by hypothesis to a minimal one and printed,
with every distinct failure seen. The seed is printed first; set FUZZ_SEED
(or --seed) to replay a run. The arguments, ids and strings drawn come from
the seed alone, not from the server's answers, so a replay against a fresh
server with the same schema sends the same operations (with that server's
ids in the same places).

Usage: python fuzz.py http://127.0.0.1:8080/graphql [--seed N]
           [--examples N] [--negative N] [--admin EMAIL:PASSWORD]
           [--schema schema.graphql] [--log FILE]

The schema is introspected from the server; --schema reads an SDL file
instead (and is the fallback, with a warning, when introspection is refused:
the introspection checks report that refusal on their own).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import random
import re
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

# Keep hypothesis's files (it writes none with database=None, but be sure)
# out of the clone.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(Path(tempfile.gettempdir()) / "marketplace-fuzz-hypothesis"))

import graphql  # noqa: E402
import hypothesis_graphql as hg  # noqa: E402
import requests  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import seed as hypothesis_seed  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis_graphql import nodes  # noqa: E402

CONTRACT_CODES = {
    "BAD_USER_INPUT",
    "UNAUTHENTICATED",
    "FORBIDDEN",
    "NOT_FOUND",
    "CONFLICT",
    "IDEMPOTENCY_KEY_REUSED",
    "RATE_LIMITED",
    "UNAVAILABLE",
    "INTERNAL",
}
TIMEOUT_SECONDS = 30
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
PASSWORD = "fuzzing-password-1"


class ContractViolation(Exception):
    """The server answered in a way the contract rules out."""


@dataclass
class Known:
    """Real ids and strings from the set-up, for generated arguments to hit."""

    ids: list[str] = field(default_factory=list)
    strings: list[str] = field(default_factory=list)


@dataclass
class Stats:
    operations: int = 0
    by_code: collections.Counter = field(default_factory=collections.Counter)
    by_status: collections.Counter = field(default_factory=collections.Counter)
    root_fields: collections.Counter = field(default_factory=collections.Counter)
    # signature -> (the shortest operation seen, its problem)
    failures: dict[str, tuple[str, str, str]] = field(default_factory=dict)


STATS = Stats()
LOG = None  # --log FILE: every operation and its answer, one JSON object a line


# ---------------------------------------------------------------------------
# Talking to the server


class Client:
    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()
        # Only what the fuzzer needs: no X-Consistency-Token (a wait that
        # times out is a 503 by design, not a failure).
        self.session.headers.update({"Accept": "application/graphql-response+json, application/json"})

    def post(self, query: str, token: str | None = None, variables: dict | None = None) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body: dict = {"query": query}
        if variables is not None:
            body["variables"] = variables
        return self.session.post(self.url, json=body, headers=headers, timeout=TIMEOUT_SECONDS)

    def upload_asset(self, token: str, content: bytes) -> str:
        """Stores a digital asset (PUT /assets) and returns its content hash."""
        assets = self.url.rsplit("/graphql", 1)[0] + "/assets"
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/pdf"}
        response = self.session.put(assets, data=content, headers=headers, timeout=TIMEOUT_SECONDS)
        if response.status_code not in (200, 201):
            raise SystemExit(f"fuzz: asset upload failed (HTTP {response.status_code}): {response.text[:300]}")
        return response.json()["contentHash"]

    def must(self, query: str, token: str | None = None, variables: dict | None = None) -> dict:
        """A set-up call that has to succeed."""
        response = self.post(query, token, variables)
        body = response.json()
        if body.get("errors") or response.status_code != 200:
            raise SystemExit(f"fuzz: set-up call failed (HTTP {response.status_code}): {json.dumps(body)[:500]}")
        return body["data"]


def problems_of(response: requests.Response) -> list[str]:
    """What in this answer breaks the contract (nothing: an empty list)."""
    STATS.by_status[response.status_code] += 1
    if response.status_code >= 500:
        return [f"HTTP {response.status_code}: {response.text[:300]}"]
    try:
        body = response.json()
    except ValueError:
        if 200 <= response.status_code < 300:
            return [f"HTTP {response.status_code} with a body that is not JSON: {response.text[:300]}"]
        STATS.by_code[f"(HTTP {response.status_code}, not JSON)"] += 1
        return []
    if not isinstance(body, dict) or ("data" not in body and "errors" not in body):
        return [f"HTTP {response.status_code}: neither data nor errors: {response.text[:300]}"]
    found = []
    errors = body.get("errors") or []
    if not errors:
        STATS.by_code["(no error)"] += 1
    for error in errors:
        extensions = error.get("extensions") if isinstance(error, dict) else None
        code = extensions.get("code") if isinstance(extensions, dict) else None
        STATS.by_code[code or "(no code)"] += 1
        if code is None:
            found.append(f"an error without extensions.code: {json.dumps(error)[:300]}")
        elif code == "INTERNAL":
            found.append(f"INTERNAL: {json.dumps(error)[:300]}")
        elif code not in CONTRACT_CODES:
            found.append(f"a code the contract does not name ({code}): {json.dumps(error)[:300]}")
    return found


def root_fields(operation: str) -> list[str]:
    try:
        document = graphql.parse(operation)
    except graphql.GraphQLError:
        return ["(unparsable)"]
    names = []
    for definition in document.definitions:
        if isinstance(definition, graphql.OperationDefinitionNode):
            names += [
                f"{definition.operation.value}.{s.name.value}"
                for s in definition.selection_set.selections
                if isinstance(s, graphql.FieldNode)
            ]
    return names or ["(none)"]


def record_failure(role: str, operation: str, problem: str) -> None:
    signature = f"{','.join(sorted(set(root_fields(operation))))} {UUID_RE.sub('<uuid>', problem)[:160]}"
    seen = STATS.failures.get(signature)
    if seen is None or len(operation) < len(seen[1]):
        STATS.failures[signature] = (role, operation, problem)


def send(client: Client, role: str, token: str, operation: str) -> None:
    """The property: one generated operation gets a contract-abiding answer."""
    STATS.operations += 1
    for name in root_fields(operation):
        STATS.root_fields[name] += 1
    try:
        response = client.post(operation, token)
    except requests.RequestException as e:
        problems = [f"no answer: {type(e).__name__}: {e}"]
    else:
        problems = problems_of(response)
        if LOG is not None:
            print(json.dumps({"role": role, "operation": operation, "status": response.status_code,
                              "body": response.text[:2000]}), file=LOG)
    if problems:
        for problem in problems:
            record_failure(role, operation, problem)
        raise ContractViolation("; ".join(problems))


# ---------------------------------------------------------------------------
# Set-up: accounts and things for the generated ids to point at


def register(client: Client, role: str, run: str) -> tuple[str, str, str]:
    email = f"fuzz-{role.lower()}-{run}@example.com"
    data = client.must(
        "mutation($input: RegisterInput!) { register(input: $input) { token account { id } } }",
        variables={"input": {"email": email, "password": PASSWORD, "displayName": f"Fuzz {role}", "roles": [role]}},
    )["register"]
    return data["token"], data["account"]["id"], email


CREATE_LISTING = """mutation($input: CreateListingInput!) {
  createListing(input: $input) { listing { id } } }"""
PLACE_ORDER = """mutation($input: PlaceOrderInput!) {
  placeOrder(input: $input) { order { id } consistencyToken } }"""


def create_listing(client: Client, seller: str, kind: str, publish: bool, **extra: object) -> str:
    listing = client.must(
        CREATE_LISTING,
        seller,
        {
            "input": {
                "kind": kind,
                "title": f"Fuzz {kind.lower()}",
                "description": "A listing for the fuzzer",
                "category": "fuzz",
                "tags": ["fuzz", "lamp"],
                "price": {"amount": "1.50", "currencyCode": "EUR"},
                **extra,
            }
        },
    )["createListing"]["listing"]
    if listing is None:
        raise SystemExit("fuzz: a created listing did not reach the catalogue in time")
    if publish:
        client.must("mutation($id: ID!) { publishListing(id: $id) { consistencyToken } }", seller, {"id": listing["id"]})
    return listing["id"]


def confirmed_order(client: Client, buyer: str, listing: str) -> str:
    """Places an order and polls (bounded) until the checkout saga confirmed it."""
    order = client.must(PLACE_ORDER, buyer, {"input": {"lines": [{"listingId": listing, "quantity": 1}]}})
    order = order["placeOrder"]["order"]
    if order is None:
        raise SystemExit("fuzz: a placed order did not reach the orders read model in time")
    deadline = time.monotonic() + 30
    while True:
        status = client.must("query($id: ID!) { order(id: $id) { status statusReason } }", buyer, {"id": order["id"]})
        status = status["order"]
        if status and status["status"] == "CONFIRMED":
            return order["id"]
        if (status and status["status"] != "PENDING") or time.monotonic() > deadline:
            raise SystemExit(f"fuzz: the set-up order was not confirmed: {status}")
        time.sleep(0.1)


def end_cursor(client: Client, token: str | None, query: str) -> list[str]:
    data = client.must(query, token)
    connection = next(iter(data.values()))
    cursor = connection["pageInfo"]["endCursor"]
    return [cursor] if cursor else []


def set_up(client: Client, admin: tuple[str, str] | None) -> tuple[dict[str, str], Known]:
    """A small marketplace for the generated ids to point at: a BUYER and a
    SELLER, published PHYSICAL and DIGITAL listings and a draft, a funded
    wallet, a CONFIRMED order and a DELIVERED one with a PENDING review."""
    run = uuid.uuid4().hex[:12]
    buyer, buyer_id, buyer_email = register(client, "BUYER", run)
    seller, seller_id, seller_email = register(client, "SELLER", run)
    tokens = {"BUYER": buyer, "SELLER": seller}
    physical = create_listing(client, seller, "PHYSICAL", True, quantity=1000)
    content_hash = client.upload_asset(seller, f"fuzz asset {run}".encode())
    digital = create_listing(client, seller, "DIGITAL", True, contentHash=content_hash)
    draft = create_listing(client, seller, "PHYSICAL", False, quantity=3)
    client.must('mutation { depositFunds(amount: {amount: "1000.00", currencyCode: "EUR"}) { consistencyToken } }', buyer)
    confirmed = confirmed_order(client, buyer, physical)
    delivered = confirmed_order(client, buyer, physical)
    client.must('mutation($id: ID!) { shipOrder(id: $id, trackingCode: "TRACK-1") { consistencyToken } }', seller, {"id": delivered})
    client.must("mutation($id: ID!) { confirmDelivery(id: $id) { consistencyToken } }", buyer, {"id": delivered})
    review = client.must(
        "mutation($input: SubmitReviewInput!) { submitReview(input: $input) { review { id } consistencyToken } }",
        buyer,
        {"input": {"listingId": physical, "orderId": delivered, "rating": 4, "comment": "Lights up"}},
    )["submitReview"]["review"]
    ids = [buyer_id, seller_id, physical, digital, draft, confirmed, delivered] + ([review["id"]] if review else [])
    strings = [buyer_email, seller_email, PASSWORD, "EUR", "USD", "fuzz", "lamp", "TRACK-1"]
    strings += [f"{category}-{i}" for category, i in [("account", buyer_id), ("account", seller_id), ("listing", physical), ("order", delivered)]]
    strings += end_cursor(client, None, "{ listings(first: 1) { pageInfo { endCursor } } }")
    strings += end_cursor(client, buyer, "{ myOrders(first: 1) { pageInfo { endCursor } } }")
    strings += end_cursor(client, buyer, "{ notifications(first: 1) { pageInfo { endCursor } } }")
    if admin is not None:
        email, password = admin
        tokens["ADMIN"] = client.must(
            "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }",
            variables={"e": email, "p": password},
        )["login"]["token"]
        strings += end_cursor(client, tokens["ADMIN"], "{ moderationQueue(first: 1) { pageInfo { endCursor } } }")
    return tokens, Known(ids=ids, strings=strings)


# ---------------------------------------------------------------------------
# Strategies for the scalars: real values often, odd ones too

# Any character a JSON string can carry, NUL and controls included
# (surrogates cannot be encoded). The server refuses a whole operation whose
# text has control characters or bidi overrides, so most strings are
# printable, to get past that check to the resolvers.
ANY_TEXT = st.text(st.characters(codec="utf-8", min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=["Cs"]))
PRINTABLE_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc", "Cf"]))
PLAIN_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


def scalar_strategies(known: Known) -> dict[str, st.SearchStrategy[graphql.ValueNode]]:
    string = st.one_of(
        st.sampled_from(known.strings),
        st.sampled_from(known.strings),
        st.emails(),
        PLAIN_TEXT,
        PRINTABLE_TEXT,
        PRINTABLE_TEXT,
        ANY_TEXT,
        st.text(st.sampled_from("ab \t\n\x00\x1b\u200b\u202e\ufeffé漢😀"), min_size=1, max_size=12),
        st.sampled_from([300, 5_000]).map(lambda n: "x" * n),
        # Shaped like a stream name, `<category>-<uuid>`, often a real one.
        st.builds(
            "{}-{}".format,
            st.sampled_from(["account", "listing", "order", "review", "email"]) | PLAIN_TEXT,
            st.sampled_from(known.ids) | st.uuids().map(str),
        ),
    ).map(nodes.String)
    identifier = st.one_of(
        st.sampled_from(known.ids).map(nodes.String),
        st.sampled_from(known.ids).map(nodes.String),
        st.uuids().map(nodes.String),
        st.sampled_from(known.ids).map(lambda i: nodes.String(i.upper())),
        PRINTABLE_TEXT.map(nodes.String),
        ANY_TEXT.map(nodes.String),
        st.integers(min_value=-(2**31), max_value=2**31 - 1).map(nodes.Int),
    )
    integer = st.one_of(
        st.integers(min_value=1, max_value=5),
        st.integers(min_value=-3, max_value=120),
        st.sampled_from([0, 1, 100, 101, 1000, 2**31 - 1, -(2**31)]),
        st.integers(min_value=-(2**31), max_value=2**31 - 1),
    ).map(nodes.Int)
    date_time = st.one_of(
        st.datetimes(
            min_value=dt.datetime(1, 1, 1),
            max_value=dt.datetime(9999, 12, 31),
            timezones=st.just(dt.timezone.utc),
        ).map(lambda d: nodes.String(d.isoformat())),
        st.sampled_from(["2026-01-01T00:00:00Z", "1970-01-01T00:00:00+00:00", "0000-01-01T00:00:00Z"]).map(
            nodes.String
        ),
        PLAIN_TEXT.map(nodes.String),
        st.integers().map(nodes.Int),
    )
    decimal_ = st.one_of(
        st.decimals(allow_nan=False, allow_infinity=False, places=2, min_value=-(10**6), max_value=10**6).map(
            lambda d: nodes.String(format(d, "f"))
        ),
        st.decimals(allow_nan=False, allow_infinity=False).map(nodes.String),
        st.sampled_from(["0", "-0", "0.001", "1e3", "1E-7", "79228162514264337593543950335", "1e400", "NaN", "", " 1"]).map(
            nodes.String
        ),
        PLAIN_TEXT.map(nodes.String),
        st.integers().map(nodes.Int),
        st.floats(allow_nan=False, allow_infinity=False).map(nodes.Float),
    )
    return {"String": string, "ID": identifier, "Int": integer, "DateTime": date_time, "Decimal": decimal_}


# ---------------------------------------------------------------------------
# The runs


def load_schema(client: Client, sdl_path: str | None) -> graphql.GraphQLSchema:
    if sdl_path is None:
        response = client.post(graphql.get_introspection_query(descriptions=False))
        body = response.json()
        if not body.get("errors") and body.get("data"):
            return graphql.build_client_schema(body["data"])
        refusal = json.dumps(body.get("errors"))[:200]
        sdl_path = str(Path(__file__).resolve().parent.parent / "schema.graphql")
        print(f"warning: introspection refused ({refusal}); fuzzing {sdl_path} instead")
    return graphql.build_schema(Path(sdl_path).read_text())


def fuzz(
    client: Client,
    role: str,
    token: str,
    name: str,
    strategy: st.SearchStrategy[str],
    examples: int,
    seed: int,
) -> bool:
    before = STATS.operations
    started = time.monotonic()

    @hypothesis_seed(seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
        report_multiple_bugs=False,
    )
    @given(operation=strategy)
    def test(operation: str) -> None:
        send(client, role, token, operation)

    ok = True
    try:
        test()
    except ContractViolation as e:
        ok = False
        # Hypothesis attaches the shrunk operation to the exception.
        notes = "\n".join(getattr(e, "__notes__", [])) or "(no minimal example recorded)"
        print(f"FAIL  {role} {name}: {e}\n{notes}")
    took = time.monotonic() - started
    print(f"{'ok   ' if ok else 'fail '} {role:6} {name:24} {STATS.operations - before:5} operations in {took:5.1f} s")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--seed", type=int, default=None, help="default: $FUZZ_SEED, else random")
    parser.add_argument(
        "--examples",
        type=int,
        default=int(os.environ.get("FUZZ_EXAMPLES", "500")),
        help="valid queries, and as many valid mutations, per role ($FUZZ_EXAMPLES, default 500)",
    )
    parser.add_argument(
        "--negative",
        type=int,
        default=int(os.environ.get("FUZZ_NEGATIVE", "100")),
        help="operations breaking one schema rule, per role ($FUZZ_NEGATIVE, default 100)",
    )
    parser.add_argument("--schema", default=None, help="an SDL file instead of introspecting the server")
    parser.add_argument(
        "--admin",
        default=os.environ.get("FUZZ_ADMIN"),
        help="EMAIL:PASSWORD of an ADMIN account (`marketplace accounts create-admin`) to fuzz as ADMIN too ($FUZZ_ADMIN)",
    )
    parser.add_argument("--log", default=None, help="write every operation and its answer to this file (JSON lines)")
    args = parser.parse_args()
    global LOG
    if args.log:
        LOG = open(args.log, "w", encoding="utf-8")  # noqa: SIM115 - open for the whole run

    seed = args.seed
    if seed is None and os.environ.get("FUZZ_SEED"):
        seed = int(os.environ["FUZZ_SEED"])
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    print(f"fuzz seed: {seed}  (replay: FUZZ_SEED={seed} bash conformance/run.sh)")

    client = Client(args.url)
    schema = load_schema(client, args.schema)
    admin = tuple(args.admin.split(":", 1)) if args.admin else None
    tokens, known = set_up(client, admin)
    scalars = scalar_strategies(known)
    print(
        f"signed in as {', '.join(tokens)}; {len(known.ids)} known ids, {len(known.strings)} known strings; "
        f"{args.examples} queries + {args.examples} mutations + {args.negative} invalid operations per role"
    )

    started = time.monotonic()
    ok = True
    for role, token in tokens.items():
        runs = [
            ("queries", hg.queries(schema, custom_scalars=scalars), args.examples),
            ("mutations", hg.mutations(schema, custom_scalars=scalars), args.examples),
            ("invalid operations", hg.from_schema(schema, custom_scalars=scalars, mode=hg.Mode.NEGATIVE), args.negative),
        ]
        for index, (name, strategy, examples) in enumerate(runs):
            if examples > 0:
                ok &= fuzz(client, role, token, name, strategy, examples, seed + index)

    # The server is still up and ready after all that.
    base = args.url.rsplit("/graphql", 1)[0]
    try:
        ready = requests.get(f"{base}/readyz", timeout=TIMEOUT_SECONDS).status_code
    except requests.RequestException as e:
        ready = f"no answer ({e})"
    if ready != 200:
        ok = False
        print(f"FAIL  after fuzzing, /readyz answers {ready}")

    took = time.monotonic() - started
    codes = ", ".join(f"{c} {n}" for c, n in STATS.by_code.most_common())
    statuses = ", ".join(f"{s}: {n}" for s, n in sorted(STATS.by_status.items()))
    print(f"== {STATS.operations} operations in {took:.0f} s; HTTP {statuses}")
    print(f"   errors by code: {codes}")
    roots = [
        f"{kind}.{name}"
        for kind, root in (("query", schema.query_type), ("mutation", schema.mutation_type))
        if root is not None
        for name in root.fields
    ]
    missed = sorted(set(roots) - set(STATS.root_fields))
    not_reached = f" (not: {', '.join(missed)})" if missed else ""
    print(f"   root fields exercised: {len(roots) - len(missed)} of {len(roots)}{not_reached}")
    if STATS.failures:
        print(f"== {len(STATS.failures)} distinct contract violation(s), each with its shortest operation:")
        for signature, (role, operation, problem) in sorted(STATS.failures.items()):
            print(f"-- as {role}: {problem}\n{operation}\n")
    required = 2000
    if STATS.operations < required and args.examples >= 500:
        ok = False
        print(f"FAIL  only {STATS.operations} operations were sent (at least {required} expected)")
    print(f"== fuzz seed was {seed}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
