"""Registers every CRI v1 RPC on the gRPC server; the handlers live in the call-group modules.

A module of this package that defines ``HANDLERS = {"RpcName": handler}`` serves those RPCs; it may
also define ``ABANDONED = {"RpcName": fn(rt, request)}``, told when a caller gives up before the call
finished, so that its retry can claim the result (see calls.wrap_unary).
Every other RPC of both services answers UNIMPLEMENTED naming itself, so a new CRI call shows up
as a clear error rather than a crash.

The method table is built from the proto's service descriptors rather than by the generated
``add_*_to_server``: a handler may return the serialized bytes of its answer (cri/server/answers.py
keeps those of the small reads), which the serializer sends as they are.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable

import grpc
from cri.api.v1 import api_pb2

from cri.server.calls import unimplemented, wrap

_NOT_HANDLER_MODULES = {"servicer", "calls", "errors", "convert", "batches", "answers"}


def discover_handlers() -> tuple[dict[str, Callable], dict[str, Callable]]:
    import cri.server as package

    handlers: dict[str, Callable] = {}
    abandoned: dict[str, Callable] = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.name in _NOT_HANDLER_MODULES:
            continue
        module = importlib.import_module(f"cri.server.{info.name}")
        for name, fn in getattr(module, "HANDLERS", {}).items():
            if name in handlers:
                raise RuntimeError(f"RPC {name} has two handlers: {handlers[name].__module__} and {module.__name__}")
            handlers[name] = fn
        abandoned.update(getattr(module, "ABANDONED", {}))
    return handlers, abandoned


def _serialize(response) -> bytes:
    return response if response.__class__ is bytes else response.SerializeToString()


def _method_handler(method, behaviour: Callable) -> grpc.RpcMethodHandler:
    parse = getattr(api_pb2, method.input_type.name).FromString
    make = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
    return make(behaviour, request_deserializer=parse, response_serializer=_serialize)


def register(server: grpc.aio.Server, rt: Any) -> dict[str, Callable]:
    """Add both CRI services to `server`; return the implemented handlers by RPC name."""
    from cri.server.answers import ReadAnswers

    handlers, abandoned = discover_handlers()
    rt.answers = ReadAnswers(rt)
    known = set()
    for service in api_pb2.DESCRIPTOR.services_by_name.values():
        table = {}
        for method in service.methods:
            name = method.name
            known.add(name)
            fn = handlers.get(name)
            call = wrap(name, fn, rt, abandoned.get(name)) if fn else unimplemented(name)
            table[name] = _method_handler(method, call)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, table),))
        server.add_registered_method_handlers(service.full_name, table)
    stray = set(handlers) - known
    if stray:
        raise RuntimeError(f"handlers for RPCs that CRI v1 does not have: {sorted(stray)}")
    return handlers
