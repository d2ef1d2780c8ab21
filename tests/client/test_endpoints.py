"""Each endpoint's decoder names the model its `Call[...]` annotation promises (the names are
strings so that the CLI's `JsonClient` never imports the wire models; this keeps them honest)."""

from __future__ import annotations

import ast
import inspect
import json

import pytest
from pydantic import BaseModel, ValidationError

from meshctl.client import _endpoints
from meshctl.wire import schemas as s


def _endpoint_functions() -> list[ast.FunctionDef]:
    tree = ast.parse(inspect.getsource(_endpoints.Endpoints))
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and any(ast.unparse(d) == "endpoint" for d in node.decorator_list)
    ]


def _decoder(fn: ast.FunctionDef) -> str:
    calls = [
        node
        for node in ast.walk(fn)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("model", "model_list")
    ]
    if not calls:
        return "raw_json"
    (call,) = calls
    (arg,) = call.args
    assert isinstance(arg, ast.Constant) and isinstance(arg.value, str), ast.unparse(call)
    return f"s.{arg.value}" if call.func.id == "model" else f"list[s.{arg.value}]"  # type: ignore[attr-defined]


def test_every_decoder_matches_its_annotation() -> None:
    functions = _endpoint_functions()
    assert len(functions) >= 30  # every endpoint of the API is here
    for fn in functions:
        assert fn.returns is not None, fn.name
        promised = ast.unparse(fn.returns)
        decoder = _decoder(fn)
        expected = "Call[dict[str, Any]]" if decoder == "raw_json" else f"Call[{decoder}]"
        assert promised == expected, f"{fn.name}: annotated {promised}, decodes {decoder}"
        name = decoder.removeprefix("list[").removeprefix("s.").removesuffix("]")
        if decoder != "raw_json":
            assert issubclass(getattr(s, name), BaseModel), f"{fn.name}: {name} is no wire model"


def test_decoders_validate_into_the_named_model() -> None:
    decode = _endpoints.model_list("RegionOut")
    region = {"id": "aws:us-east-1", "cloud": "aws", "name": None, "lat": 38.9, "lon": -77.4, "metro": None}
    regions = decode(json.dumps([{**region, "state": "drained"}]).encode())
    assert isinstance(regions[0], s.RegionOut) and regions[0].state == "drained"
    with pytest.raises(ValidationError, match="state"):
        decode(json.dumps([{**region, "state": "on fire"}]).encode())
    assert repr(decode) == "list[RegionOut]" and repr(_endpoints.model("StatusOut")) == "StatusOut"
