"""The official Python client (`llama-agents-client` from PyPI, unchanged) drives the Rust
example server (`cargo run --example server`): list, schema, run, run-nowait, stream events,
answer a human, cancel, list handlers. Run by workflow-server/tests/python/run.sh.

Every check is an assert; the script exits non-zero on the first failure.
"""

import asyncio
import os
import sys

import httpx
from llama_agents.client import WorkflowClient
from workflows.events import HumanResponseEvent, StartEvent, StopEvent

BASE = os.environ.get("SERVER_URL", "http://127.0.0.1:8080")


async def main() -> None:
    client = WorkflowClient(base_url=BASE)

    health = await client.is_healthy()
    assert health.status == "healthy", health

    # list
    listed = await client.list_workflows()
    assert listed.workflows == ["approval", "download", "joke"], listed

    # schema
    schema = await client.get_workflow_schema("joke")
    assert schema.start["title"] == "JokeRequest", schema.start
    assert schema.start["required"] == ["topic"], schema.start
    assert schema.stop["properties"]["result"]["type"] == "string", schema.stop
    events = await client.get_workflow_events_schema("approval")
    titles = {e.get("title") for e in events.events}
    assert {"Review", "Verdict"} <= titles, titles
    graph = await client.get_workflow_graph("approval")
    assert graph.graph.name == "Approval", graph.graph
    assert any(n.id == "decide" for n in graph.graph.nodes), graph.graph.nodes

    # run (waits): a plain dict start event, and a StartEvent instance
    done = await client.run_workflow("joke", start_event={"topic": "pirates"})
    assert done.status == "completed", done
    assert done.result is not None
    assert done.result.type == "StopEvent", done.result
    assert done.result.value["result"].startswith("Why did the pirates"), done.result
    loaded = done.result.load_event()  # the envelope loads as Python's StopEvent
    assert isinstance(loaded, StopEvent) and loaded.result == done.result.value["result"]
    done2 = await client.run_workflow("joke", start_event=StartEvent(topic="robots"))
    assert "robots" in done2.result.value["result"], done2

    # a bad payload is refused (400) and names the field; nothing runs
    before = len((await client.get_handlers()).handlers)
    try:
        await client.run_workflow("joke", start_event={"subject": "x"})
        raise AssertionError("a bad start event was accepted")
    except httpx.HTTPStatusError as e:
        assert e.response.status_code == 400, e
        assert "topic" in e.response.json()["detail"], e.response.text
    assert len((await client.get_handlers()).handlers) == before

    # run-nowait + stream events (progress, then the stop event)
    started = await client.run_workflow_nowait(
        "download", start_event=StartEvent(chunks=5, delay_ms=5)
    )
    assert started.status == "running", started
    stream = client.get_workflow_events(started.handler_id)
    seen, cursors = [], []
    async for ev in stream:
        seen.append(ev)
        cursors.append(stream.last_sequence)
    types = [ev.type for ev in seen]
    assert types == ["Progress"] * 5 + ["StopEvent"], types
    assert [ev.value["done"] for ev in seen[:5]] == [1, 2, 3, 4, 5]
    assert seen[-1].value["result"] == {"chunks": 5, "checksum": 15}, seen[-1]
    # every event carries its sequence number, rising; the served workflows record step
    # activity for the debugger page, so the numbers skip the internal events in between
    assert all(isinstance(c, int) for c in cursors), cursors
    assert cursors == sorted(set(cursors)), cursors
    assert stream.last_sequence == cursors[-1], stream.last_sequence
    # resume from a cursor (after the fourth progress event): only what came after it
    tail = [ev async for ev in client.get_workflow_events(started.handler_id, after_sequence=cursors[3])]
    assert [ev.type for ev in tail] == ["Progress", "StopEvent"], tail
    assert tail[0].value["done"] == 5, tail
    # with internal events asked for, the step activity in between is there too
    everything = [
        ev
        async for ev in client.get_workflow_events(
            started.handler_id, include_internal_events=True
        )
    ]
    assert len(everything) > len(seen), [ev.type for ev in everything]
    assert [ev.type for ev in everything if ev.type in ("Progress", "StopEvent")] == types
    final = await client.wait_for_handler(started.handler_id, poll_interval=0.05)
    assert final.status == "completed" and final.result.value["result"]["checksum"] == 15

    # answer a human: a request arrives on the stream, the answer goes back with send_event
    asked = await client.run_workflow_nowait("approval", start_event=StartEvent(topic="tidewater"))
    rounds = 0
    async for ev in client.get_workflow_events(asked.handler_id):
        if ev.type == "Review":
            assert "InputRequiredEvent" in (ev.types or []), ev
            rounds += 1
            if rounds == 1:
                answer = {"type": "Verdict", "value": {"approved": False, "feedback": "shorter"}}
            else:
                answer = {"type": "Verdict", "value": {"approved": True}}
            sent = await client.send_event(asked.handler_id, answer)
            assert sent.status == "sent", sent
        elif ev.type == "StopEvent":
            assert ev.value["result"]["rounds"] == 2, ev
    assert rounds == 2, rounds
    answered = await client.get_handler(asked.handler_id)
    assert answered.status == "completed", answered
    # an ended run refuses more events (409)
    try:
        await client.send_event(asked.handler_id, {"type": "Verdict", "value": {"approved": True}})
        raise AssertionError("an ended run accepted an event")
    except httpx.HTTPStatusError as e:
        assert e.response.status_code == 409, e

    # a bad answer is refused with the field named
    waiting = await client.run_workflow_nowait("approval", start_event=StartEvent(topic="x"))
    try:
        await client.send_event(waiting.handler_id, {"type": "Verdict", "value": {"approved": "maybe"}})
        raise AssertionError("a bad answer was accepted")
    except httpx.HTTPStatusError as e:
        assert e.response.status_code == 400 and "approved" in e.response.text, e.response.text

    # cancel
    slow = await client.run_workflow_nowait(
        "download", start_event=StartEvent(chunks=100000, delay_ms=10)
    )
    cancelled = await client.cancel_handler(slow.handler_id)
    assert cancelled.status == "cancelled", cancelled
    # like llama-agents-server, a handler that did not complete answers 500 with its data
    try:
        await client.get_handler(slow.handler_id)
        raise AssertionError("a cancelled handler answered 2xx")
    except httpx.HTTPStatusError as e:
        assert e.response.status_code == 500 and e.response.json()["status"] == "cancelled", e
    purged = await client.cancel_handler(waiting.handler_id, purge=True)
    assert purged.status == "deleted", purged

    # list handlers, with filters
    everything = await client.get_handlers()
    ids = {h.handler_id for h in everything.handlers}
    assert {done.handler_id, started.handler_id, asked.handler_id, slow.handler_id} <= ids
    assert waiting.handler_id not in ids
    cancelled_only = await client.get_handlers(status=["cancelled"])
    assert slow.handler_id in [h.handler_id for h in cancelled_only.handlers], cancelled_only
    assert all(h.status == "cancelled" for h in cancelled_only.handlers), cancelled_only
    jokes = await client.get_handlers(workflow_name=["joke"], status=["completed"])
    assert {done.handler_id, done2.handler_id} <= {h.handler_id for h in jokes.handlers}
    assert all(h.workflow_name == "joke" and h.status == "completed" for h in jokes.handlers)

    print("python client: all checks passed")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except AssertionError:
        import traceback

        traceback.print_exc()
        sys.exit(1)
