"""Registers every CRI v1 RPC on the gRPC server; the handlers live in the call-group modules.

A module of this package that defines ``HANDLERS = {"RpcName": handler}`` serves those RPCs; it may
also define ``ABANDONED = {"RpcName": fn(rt, request)}``, told when a caller gives up before the call
finished, so that its retry can claim the result (see calls.wrap_unary).
Every other RPC of both services answers UNIMPLEMENTED naming itself, so a new CRI call shows up
as a clear error rather than a crash.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable

import grpc
from cri.api.v1 import api_pb2_grpc

from cri.server.calls import unimplemented, wrap

_NOT_HANDLER_MODULES = {"servicer", "calls", "errors", "convert", "batches"}


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


def _rpc_names(servicer_class: type) -> list[str]:
    return [n for n in vars(servicer_class) if n[0].isupper()]


def register(server: grpc.aio.Server, rt: Any) -> dict[str, Callable]:
    """Add both CRI services to `server`; return the implemented handlers by RPC name."""
    handlers, abandoned = discover_handlers()
    known = set()
    for servicer_class, add in (
        (api_pb2_grpc.RuntimeServiceServicer, api_pb2_grpc.add_RuntimeServiceServicer_to_server),
        (api_pb2_grpc.ImageServiceServicer, api_pb2_grpc.add_ImageServiceServicer_to_server),
    ):
        servicer = servicer_class()
        for name in _rpc_names(servicer_class):
            known.add(name)
            fn = handlers.get(name)
            setattr(servicer, name, wrap(name, fn, rt, abandoned.get(name)) if fn else unimplemented(name))
        add(servicer, server)
    stray = set(handlers) - known
    if stray:
        raise RuntimeError(f"handlers for RPCs that CRI v1 does not have: {sorted(stray)}")
    return handlers
