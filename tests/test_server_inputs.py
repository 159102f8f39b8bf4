"""No request body gets a 500, and a row's answer depends only on its task and text (issue 8).

A fuzz test sends random JSON shapes, depths, types, surrogates, control characters and huge
numbers to every route that reads a body; the rest pin arity, per-task truncation, V2 content
types and Unicode over REST and V2, and that bad requests never disturb their batch-mates.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from odd_values import ODD_VALUES
from runtime_fixtures import LONG_TEXT, synthetic_delta
from starlette.testclient import TestClient

from bitfit_deploy.delta import save_delta
from bitfit_deploy.errors import TaskNotFoundError
from bitfit_deploy.runtime import Runtime
from bitfit_deploy.runtime.server import create_app

TOKEN = "fuzz-token"
TASKS = {  # name -> (problem_type, labels, inputs, max_length)
    "sent": ("single_label", ["negative", "positive"], "single", 16),
    "nli": ("single_label", ["entailment", "neutral", "contradiction"], "pair", 24),
    "old": ("regression", ["score"], "unknown", 128),
}
DEEP = 100_000
SPECIAL_TEXTS = [
    "great film \ud83d",
    "\udc00",
    "\x00",
    "nul\x00inside",
    "\x1b[31mred\x1b[0m",
    "\u202eevil",
    "\ufeff",
    "\r\n\t",
    "💥" * 30,
    "",
    "3",
]


class _Records(logging.Handler):
    """Keeps the server log's records, to show no request was an internal error."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class _Spy:
    """The real runtime; records each batch run's rows and counts runs that raised."""

    def __init__(self, inner: Runtime) -> None:
        self.inner, self.sizes, self.failed = inner, [], 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def predict_mixed(self, rows: Any) -> Any:
        self.sizes.append(len(rows))
        try:
            return self.inner.predict_mixed(rows)
        except Exception:
            self.failed += 1
            raise


@pytest.fixture(scope="module")
def runtime(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    from bitfit_deploy.exporters.bundle import export_bundle

    root = tmp_path_factory.mktemp("served-inputs")
    manifest = export_bundle(root / "bundle", model=str(tiny_bert))
    runtime = Runtime(root / "bundle", threads=1, max_batch_size=16)
    for seed, (name, (kind, labels, inputs, max_length)) in enumerate(TASKS.items()):
        delta = synthetic_delta(manifest, name, kind, labels, seed=seed)
        delta.metadata.inputs, delta.metadata.max_length = inputs, max_length
        runtime.load_task(save_delta(delta, root / f"{name}.safetensors"))
    return runtime


@pytest.fixture(scope="module")
def log_records() -> Iterator[_Records]:
    handler = _Records()
    logger = logging.getLogger("bitfit_deploy.server")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture(scope="module")
def client(runtime: Runtime, log_records: _Records) -> Iterator[TestClient]:
    app = create_app(runtime, max_batch_size=16, max_delay_ms=1, admin_token=TOKEN)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def error_of(response: httpx.Response, status: int, code: str) -> str:
    """The message of a JSON error answer (REST or V2 layout) after checking status and code."""
    assert response.status_code == status, response.text
    body = response.json()
    assert code in (body.get("error"), body.get("code")), body
    return body["detail"] if "detail" in body else body["error"]


# --------------------------------------------------------------------- fuzz

plain = st.text(st.characters(categories=["L", "M", "N", "P", "S", "Z", "C"]), max_size=12)
texts = st.one_of(  # hypothesis never draws surrogates itself: some texts get one inserted
    plain,
    plain,
    st.sampled_from(SPECIAL_TEXTS),
    st.builds("{}{}{}".format, plain, st.sampled_from(["\ud83d", "\udc00", "\udbff"]), plain),
)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([10**400, -(2**63), 1e308, -1]),
    st.floats(),
    texts,
)
any_json = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
pair = st.lists(texts, min_size=2, max_size=2)
rest_input = st.one_of(texts, texts, pair, st.lists(texts, max_size=3), any_json)
rest_body = st.fixed_dictionaries({"inputs": st.lists(rest_input, max_size=4) | any_json})
task_names = st.sampled_from(["sent", "nli", "old", "old", "nope"])
mixed_body = st.fixed_dictionaries(
    {
        "requests": st.lists(
            st.fixed_dictionaries({"task": task_names | any_json, "input": rest_input}),
            max_size=4,
        )
        | any_json
    }
)
v2_params = st.fixed_dictionaries(
    {},
    optional={
        "content_type": st.sampled_from(["str", "base64", "np", "pd", ""]) | any_json,
        "binary_data_size": st.integers(-2, 12) | any_json,
        "binary_data_output": any_json,
    },
)
v2_tensor = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["text", "text_pair"]) | any_json,
        "datatype": st.sampled_from(["BYTES", "FP32"]) | any_json,
        "shape": st.lists(st.integers(-1, 4), max_size=3) | any_json,
    },
    optional={
        "data": st.lists(texts | texts | pair | any_json, max_size=4) | any_json,
        "parameters": v2_params | any_json,
    },
)
v2_body = st.fixed_dictionaries(
    {"inputs": st.lists(v2_tensor, max_size=3) | any_json},
    optional={
        "id": any_json,
        "parameters": v2_params | any_json,
        "outputs": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["label", "score", "scores", "value", "x"]) | any_json},
                optional={"parameters": any_json},
            ),
            max_size=3,
        )
        | any_json,
    },
)


def encoded(value: Any, ascii_only: bool) -> bytes:
    """JSON bytes as a client sends them: escapes (lone surrogates too) or raw UTF-8 (then invalid)."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def bodies(structured: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Bodies for one route: its own shapes, any JSON, raw bytes, and deep or unclosed nesting."""
    return st.one_of(
        st.builds(encoded, structured, st.booleans()),
        st.builds(encoded, structured, st.booleans()),
        st.builds(encoded, any_json, st.booleans()),
        st.binary(max_size=64),
        st.builds(
            extreme,
            st.sampled_from([b'{"inputs": ', b'{"requests": ', b'{"inputs": [{"data": ', b""]),
            st.sampled_from(["arrays", "objects", "unclosed", "digits"]),
            st.integers(1, DEEP),
        ),
    )


def extreme(prefix: bytes, kind: str, n: int) -> bytes:
    """A body holding a value nested `n` deep, or an integer of `n` digits, after `prefix`."""
    value = {
        "arrays": b"[" * n + b"]" * n,
        "objects": b'{"a": ' * n + b"1" + b"}" * n,
        "unclosed": b"[" * n,
        "digits": b"9" * n,
    }[kind]
    return prefix + value + (b"}" * prefix.count(b"{") + b"]" * prefix.count(b"["))[::-1]


def assert_answered(response: httpx.Response, log_records: _Records) -> None:
    """2xx or 4xx with a JSON body (a JSON error for 4xx), and no internal error logged."""
    assert 200 <= response.status_code < 500, response.text
    body = response.json()
    if response.status_code >= 400:
        assert isinstance(body["error"], str) and body["error"]
    assert not [r for r in log_records.records if "internal error" in r.getMessage()]


FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(task=task_names, body=bodies(rest_body))
def test_no_rest_predict_body_gets_a_500(client, log_records, task, body) -> None:
    response = client.post(f"/v1/tasks/{task}/predict", content=body)
    assert_answered(response, log_records)


@FUZZ
@given(body=bodies(mixed_body))
def test_no_mixed_predict_body_gets_a_500(client, log_records, body) -> None:
    assert_answered(client.post("/v1/predict", content=body), log_records)


@FUZZ
@given(
    task=task_names,
    body=bodies(v2_body),
    header=st.none() | st.sampled_from(["", "x", "-1", "0", "7", "99999", "1e3", " 5 "]),
)
def test_no_v2_infer_body_gets_a_500(client, log_records, task, body, header) -> None:
    headers = {} if header is None else {"Inference-Header-Content-Length": header}
    response = client.post(f"/v2/models/{task}/infer", content=body, headers=headers)
    assert_answered(response, log_records)


@settings(max_examples=40, deadline=None, database=None)
@given(body=st.binary(max_size=256) | bodies(any_json))
def test_no_admin_upload_gets_a_500(client, log_records, body) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = client.put("/v1/tasks/fuzzed", content=body, headers=headers)
    assert_answered(response, log_records)
    assert response.status_code == 422 and "fuzzed" not in client.get("/v1/tasks").text


def test_concurrent_good_requests_keep_their_answers_and_batching_among_bad_ones(
    runtime: Runtime, log_records: _Records
) -> None:
    spy = _Spy(runtime)
    app = create_app(spy, max_batch_size=32, max_delay_ms=50)  # type: ignore[arg-type]
    good = [("sent", "a fine film"), ("nli", ["a man sleeps", "nobody sleeps"]), ("old", "ok")]
    deep = b'{"inputs": ' + b"[" * DEEP + b"]" * DEEP + b"}"
    bad: list[tuple[str, dict[str, Any] | bytes]] = [
        ("/v1/tasks/sent/predict", {"inputs": ["great film \ud83d"]}),
        ("/v1/tasks/sent/predict", {"inputs": [["great", "film"]]}),
        ("/v1/tasks/nli/predict", {"inputs": ["one text"]}),
        ("/v1/predict", {"requests": [{"task": "sent", "input": ["a", "b", "c"]}]}),
        ("/v1/tasks/sent/predict", deep),
        ("/v2/models/sent/infer", v2_request(["\udc00"])),
        ("/v2/models/sent/infer", v2_request(["Z3JlYXQ="], content_type="np")),
        ("/v2/models/sent/infer", v2_request(["not base64!"], content_type="base64")),
        ("/v2/models/nli/infer", v2_request(["no pair"])),
    ]

    async def fire() -> tuple[list[httpx.Response], list[httpx.Response]]:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://test") as http,
        ):
            goods = [
                http.post(f"/v1/tasks/{task}/predict", json={"inputs": [item]})
                for _ in range(12)
                for task, item in good
            ]
            bads = [
                http.post(path, content=body if isinstance(body, bytes) else encoded(body, True))
                for _ in range(4)
                for path, body in bad
            ]
            answers = await asyncio.gather(*goods, *bads)
            return answers[: len(goods)], answers[len(goods) :]

    goods, bads = asyncio.run(fire())
    expected = {task: runtime.predict(task, [item])[0].to_dict() for task, item in good}
    for i, response in enumerate(goods):
        assert response.status_code == 200, response.text
        served = response.json()["predictions"][0]
        want = expected[good[i % len(good)][0]]
        assert served["label"] == want["label"] and served["truncated"] == want["truncated"]
        assert served["score"] == pytest.approx(want["score"], abs=1e-5)
    assert sorted({r.status_code for r in bads}) == [400, 422]
    assert spy.failed == 0  # no bad row reached a batch: nothing fell back to one-by-one
    assert sum(spy.sizes) == len(goods) and len(spy.sizes) < len(goods)  # batched: not one by one
    assert not [r for r in log_records.records if "internal error" in r.getMessage()]


# ------------------------------------------------------------ each fault


def v2_request(
    texts: list[str], pairs: list[str] | None = None, content_type: str | None = None
) -> dict[str, Any]:
    """A V2 inference request of BYTES texts (and pairs), with a content_type if given."""
    params = {} if content_type is None else {"parameters": {"content_type": content_type}}
    inputs = [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts, **params}]
    if pairs is not None:
        inputs.append(
            {
                "name": "text_pair",
                "datatype": "BYTES",
                "shape": [len(pairs)],
                "data": pairs,
                **params,
            }
        )
    return {"inputs": inputs}


def test_a_task_tells_its_inputs_and_max_length_over_rest_and_v2(client) -> None:
    sent = client.get("/v1/tasks/sent").json()
    assert (sent["inputs"], sent["max_length"]) == ("single", 16)
    listed = {t["name"]: t["inputs"] for t in client.get("/v1/tasks").json()["tasks"]}
    assert listed == {"sent": "single", "nli": "pair", "old": "unknown"}
    for task, names in [
        ("sent", ["text"]),
        ("nli", ["text", "text_pair"]),
        ("old", ["text", "text_pair"]),
    ]:
        inputs = client.get(f"/v2/models/{task}").json()["inputs"]
        assert [i["name"] for i in inputs] == names
        assert all(i["parameters"]["content_type"] == "str" for i in inputs)


def test_an_input_of_the_wrong_arity_is_422_naming_the_task_and_what_it_takes(client) -> None:
    cases = [
        (
            "/v1/tasks/sent/predict",
            {"inputs": ["fine", ["great", "film"]]},
            "input 1 for task 'sent' is a pair",
        ),
        ("/v1/tasks/nli/predict", {"inputs": ["great film"]}, "input 0 for task 'nli' is one text"),
        ("/v1/tasks/nli/predict", {"inputs": [["a"]]}, "exactly two texts"),
        ("/v1/tasks/old/predict", {"inputs": [["a", "b", "c"]]}, "exactly two texts"),
        ("/v1/tasks/old/predict", {"inputs": [{"text": "a"}]}, "an object of 1 key"),
        (
            "/v1/predict",
            {
                "requests": [
                    {"task": "old", "input": ["a", "b"]},
                    {"task": "sent", "input": ["a", "b"]},
                ]
            },
            "input 1 for task 'sent' is a pair",
        ),
        ("/v2/models/sent/infer", v2_request(["a"], ["b"]), "takes only the input 'text'"),
        ("/v2/models/nli/infer", v2_request(["a"]), "add 'text_pair'"),
    ]
    for path, body, message in cases:
        assert message in error_of(client.post(path, json=body), 422, "invalid_input")
    ok = client.post("/v1/tasks/old/predict", json={"inputs": ["a", ["a", "b"]]})
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 2
    pair = client.post("/v2/models/nli/infer", json=v2_request(["a man sleeps"], ["nobody sleeps"]))
    assert pair.status_code == 200


def test_text_that_is_not_valid_unicode_is_422_naming_the_input(client) -> None:
    lone = encoded({"inputs": ["fine", "great film \ud83d"]}, True)
    assert "input 1 for task 'sent'" in error_of(
        client.post("/v1/tasks/sent/predict", content=lone), 422, "invalid_input"
    )
    mixed = encoded({"requests": [{"task": "nli", "input": ["a", "b\udc00"]}]}, True)
    assert "the text_pair is not valid Unicode" in error_of(
        client.post("/v1/predict", content=mixed), 422, "invalid_input"
    )
    v2 = encoded(v2_request(["ok", "\ud83d"]), True)
    assert "input 1 for task 'sent'" in error_of(
        client.post("/v2/models/sent/infer", content=v2), 422, "invalid_input"
    )
    raw = encoded({"inputs": ["\ud83d"]}, False)  # json.loads reads encoded surrogates too
    assert "input 0 for task 'sent'" in error_of(
        client.post("/v1/tasks/sent/predict", content=raw), 422, "invalid_input"
    )
    latin1 = '{"inputs": ["caf\xe9"]}'.encode("latin-1")
    error_of(client.post("/v1/tasks/sent/predict", content=latin1), 400, "malformed_json")


def test_deep_or_unreadable_json_is_400_malformed_json_on_every_json_route(client) -> None:
    deep = "[" * DEEP + "]" * DEEP
    huge = "1" * 5000
    for path, template in [
        ("/v1/tasks/sent/predict", '{"inputs": %s}'),
        ("/v1/predict", '{"requests": %s}'),
        ("/v2/models/sent/infer", '{"inputs": [{"name": "text", "data": %s}]}'),
        ("/v2/models/sent/infer", '{"id": %s, "inputs": []}'),
    ]:
        for value, message in [
            (deep, "deeper than"),
            ("[" * 40 + "]" * 40, "deeper than"),
            (huge, "digits"),
        ]:
            response = client.post(path, content=template % value)
            assert message in error_of(response, 400, "malformed_json")
    fine = client.post(
        "/v1/tasks/sent/predict", content='{"inputs": ["ok"], "x": %s}' % ("[" * 20 + "]" * 20)
    )
    assert fine.status_code == 200


def test_v2_reads_base64_and_str_content_types_and_refuses_others(client, runtime) -> None:
    want = runtime.predict("sent", ["great film", "a dull film"])
    encoded_texts = [base64.b64encode(t.encode()).decode() for t in ("great film", "a dull film")]
    assert encoded_texts[0] == "Z3JlYXQgZmlsbQ=="
    request_level = {
        **v2_request(["great film", "a dull film"]),
        "parameters": {"content_type": "str"},
    }
    for body in (v2_request(encoded_texts, content_type="base64"), request_level):
        response = client.post("/v2/models/sent/infer", json=body)
        assert response.status_code == 200, response.text
        labels = response.json()["outputs"][0]["data"]
        assert labels == [p.label for p in want]
        assert response.json()["outputs"][1]["data"] == pytest.approx(
            [p.score for p in want], abs=1e-5
        )

    raw = b"".join(struct.pack("<I", len(t)) + t.encode() for t in encoded_texts)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"content_type": "base64", "binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    binary = client.post(
        "/v2/models/sent/infer",
        content=head + raw,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert binary.status_code == 200 and binary.json()["outputs"][0]["data"] == [
        p.label for p in want
    ]

    for body, message in [
        (v2_request(["Z3JlYXQ="], content_type="np"), "content_type 'np'"),
        (
            {**v2_request(["x"]), "parameters": {"content_type": "pd"}},
            "the request has content_type 'pd'",
        ),
        (v2_request(["x"], content_type=7), "content_type an int"),  # type: ignore[arg-type]
        (v2_request(["not base64!"], content_type="base64"), "element 0 is not base64"),
        (v2_request(["//79"], content_type="base64"), "not UTF-8 text once base64-decoded"),
    ]:
        assert message in error_of(
            client.post("/v2/models/sent/infer", json=body), 400, "bad_request"
        )


def test_each_row_is_cut_at_its_own_tasks_length_over_rest(client, runtime) -> None:
    body = {
        "requests": [
            {"task": "sent", "input": LONG_TEXT},
            {"task": "old", "input": LONG_TEXT},
            {"task": "nli", "input": [LONG_TEXT, "short"]},
            {"task": "old", "input": " ".join(LONG_TEXT.split()[:40])},
        ]
    }
    served = client.post("/v1/predict", json=body).json()["predictions"]
    assert [p["truncated"] for p in served] == [True, True, True, False]
    alone = runtime.predict("sent", [LONG_TEXT])[0]
    assert served[0]["score"] == pytest.approx(alone.score, abs=1e-5)


not_an_object = (  # null counts as absent
    st.booleans() | st.integers() | st.text(max_size=6) | st.lists(st.integers(), max_size=2)
)
not_a_bool = (
    st.integers()
    | st.sampled_from(["false", "true", "0", ""])
    | st.lists(st.booleans(), max_size=1)
)


@settings(max_examples=60, deadline=None, database=None)
@given(
    where=st.sampled_from(["request", "input", "output"]),
    params=not_an_object | st.fixed_dictionaries({"binary_data_output": not_a_bool}),
    flag=st.booleans(),
)
def test_v2_parameters_are_objects_and_flags_booleans(client, where, params, flag) -> None:
    """A `parameters` that is not an object, or a flag that is not true/false, is a 400 naming it,
    never ignored (a string "false" would read as true); well-formed ones are answered."""
    body: dict[str, Any] = {**v2_request(["fine"]), "outputs": [{"name": "label"}]}
    holder = {"request": body, "input": body["inputs"][0], "output": body["outputs"][0]}[where]
    if isinstance(params, dict) and where == "output":
        params = {"binary_data": params["binary_data_output"]}
    holder["parameters"] = params
    response = client.post("/v2/models/sent/infer", json=body)
    if isinstance(params, dict) and where == "input":  # binary_data_output means nothing there
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 400, response.text
        assert "parameter" in response.json()["error"]
    holder["parameters"] = (
        {"binary_data_output": flag} if where != "output" else {"binary_data": flag}
    )
    assert client.post("/v2/models/sent/infer", json=body).status_code == 200


def test_v2_binary_data_size_beyond_the_data_names_both_sizes(client) -> None:
    request = {
        "inputs": [
            {
                "name": "text",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"binary_data_size": 100},
            }
        ]
    }
    header = json.dumps(request).encode()
    body = header + (4).to_bytes(4, "little") + b"good"
    headers = {"Inference-Header-Content-Length": str(len(header))}
    response = client.post("/v2/models/sent/infer", content=body, headers=headers)
    assert response.status_code == 400
    assert "binary_data_size 100 exceeds the 8 bytes of binary data" in response.json()["error"]


@settings(max_examples=30, deadline=None, database=None)
@given(
    good=st.integers(0, 3),
    bad=st.sampled_from(
        [{"input": "x"}, {"task": 5, "input": "x"}, {"task": "sent"}, "sent", None, []]
    ),
)
def test_a_malformed_mixed_request_is_named_by_its_index(client, good, bad) -> None:
    """The index, and what is wrong: not an object, a missing key, or a task that is no name."""
    requests = [{"task": "sent", "input": "fine"}] * good + [bad]
    response = client.post("/v1/predict", json={"requests": requests})
    assert response.status_code == 422
    detail = response.json()["detail"]
    if not isinstance(bad, dict):
        assert f"request {good} is" in detail
    elif "task" not in bad:
        assert f"request {good} has no 'task'" in detail
    elif "input" not in bad:
        assert f"request {good} has no 'input'" in detail
    else:
        assert f"request {good}: its task is an int, not a task name" in detail


@pytest.mark.parametrize(
    ("item", "side", "what"),
    [([["a"], "b"], "text", "a list of 1 item"), (["a", 3], "text_pair", "an int")],
)
def test_a_pair_with_a_part_that_is_no_text_names_the_part(client, item, side, what) -> None:
    body = {"requests": [{"task": "old", "input": item}]}
    detail = error_of(client.post("/v1/predict", json=body), 422, "invalid_input")
    assert f"the {side} of the pair is {what}, not a text" in detail


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    known=st.lists(st.sampled_from(["sent", "old"]), max_size=6),
    where=st.integers(min_value=0),
    unknown=st.text(min_size=1, max_size=12).filter(lambda s: s not in TASKS),
)
def test_an_unknown_task_in_a_mixed_request_names_its_index(
    client, runtime, known, where, unknown
) -> None:
    """Among known tasks, the request for an unknown one is named by its index (API and HTTP)."""
    index = where % (len(known) + 1)
    names = [*known[:index], unknown, *known[index:]]
    rows = [(name, "a fine film") for name in names]
    with pytest.raises(TaskNotFoundError, match=rf"^request {index}: task .* is not loaded"):
        runtime.predict_mixed(rows)
    body = {"requests": [{"task": t, "input": x} for t, x in rows]}
    message = error_of(client.post("/v1/predict", json=body), 404, "task_not_found")
    assert message.startswith(f"request {index}: task ")


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(length=st.integers(min_value=200, max_value=60_000))
def test_an_unknown_task_of_a_huge_name_gets_a_short_answer(client, runtime, length) -> None:
    """A 60 KB task name came back in full in the 404 detail (and the log); it is cut, with its
    length said, in every message that names a task."""
    name = "x" * length
    for path, body in (
        (f"/v1/tasks/{name}/predict", {"inputs": ["a"]}),
        ("/v1/predict", {"requests": [{"task": name, "input": "a"}]}),
    ):
        detail = error_of(client.post(path, json=body), 404, "task_not_found")
        assert len(detail) < 600 and f"({length:,} characters)" in detail
    with pytest.raises(TaskNotFoundError) as caught:
        runtime.predict(name, ["a"])
    assert len(str(caught.value)) < 600


@given(names=st.lists(st.text(min_size=1, max_size=300), max_size=60), most=st.integers(1, 30))
def test_messages_list_a_few_names_and_count_the_rest(names, most) -> None:
    from bitfit_deploy.errors import listing, shown

    text = listing(names, most)
    assert text.count(", ") >= min(len(names), most) - 1
    if len(names) > most:
        assert text.endswith(f"(and {len(names) - most:,} more)")
    for name in names:
        assert len(shown(name)) <= 80 + len("... (300 characters)")


@settings(max_examples=30, deadline=None)
@given(
    argument=st.sampled_from(["max_batch_size", "max_delay_ms", "admin_token"]),
    value=ODD_VALUES,
)
def test_create_app_checks_its_arguments(runtime, argument, value) -> None:
    """create_app(max_batch_size="8") failed later, inside the batcher; admin_token="" silently
    turned admin off. Each is an InvalidInputError naming the argument, at once."""
    from bitfit_deploy.errors import InvalidInputError

    accepted = {
        "max_batch_size": lambda v: type(v) is int and 1 <= v <= 65536,
        "max_delay_ms": lambda v: type(v) in (int, float) and 0 <= v < float("inf"),
        "admin_token": lambda v: v is None or (isinstance(v, str) and v != ""),
    }[argument](value)
    if accepted:
        create_app(runtime, **{argument: value})
    else:
        with pytest.raises(InvalidInputError, match=argument):
            create_app(runtime, **{argument: value})


@settings(max_examples=30, deadline=None)
@given(
    request_id=st.one_of(
        st.text(max_size=5),
        st.integers(),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
        st.none(),
    ),
    shape=st.sampled_from([[2], [2, 1], [1, 2], [2, 1, 1], [1, 1, 2]]),
)
def test_v2_ids_are_strings_and_texts_come_one_per_row(client, request_id, shape) -> None:
    """An object id came back as a Python repr; shape [1, 2] was read as 2 rows. The id must be
    a string (the protocol's type) and a text input [n] or [n, 1]."""
    body = v2_request(["fine", "dull"])
    body["inputs"][0]["shape"] = shape
    if request_id is not None:
        body["id"] = request_id
    response = client.post("/v2/models/sent/infer", json=body)
    if shape not in ([2], [2, 1]):
        assert response.status_code == 400 and "one text per row" in response.json()["error"]
    elif request_id is not None and not isinstance(request_id, str):
        assert response.status_code == 400 and "'id' must be a string" in response.json()["error"]
    else:
        assert response.status_code == 200
        assert response.json().get("id") == request_id
