"""The Python peer of the HTTP scenario: llama-agents-server serving the same five-step chain
as bench/src/http.rs, on 127.0.0.1:$PORT (uvicorn, one process). Run by bench/http.sh."""

import asyncio
import os

from llama_agents.server import WorkflowServer
from workflows import Workflow, step
from workflows.events import Event, StartEvent, StopEvent


class A(Event):
    v: int


class B(Event):
    v: int


class C(Event):
    v: int


class D(Event):
    v: int


class Chain(Workflow):
    @step
    async def s1(self, ev: StartEvent) -> A:
        return A(v=int(ev.get("n", 0)) + 1)

    @step
    async def s2(self, ev: A) -> B:
        return B(v=ev.v + 1)

    @step
    async def s3(self, ev: B) -> C:
        return C(v=ev.v + 1)

    @step
    async def s4(self, ev: C) -> D:
        return D(v=ev.v + 1)

    @step
    async def s5(self, ev: D) -> StopEvent:
        return StopEvent(result=ev.v + 1)


async def main() -> None:
    server = WorkflowServer()
    server.add_workflow("chain", Chain(timeout=60))
    await server.serve(host="127.0.0.1", port=int(os.environ.get("PORT", "8182")))


if __name__ == "__main__":
    asyncio.run(main())
