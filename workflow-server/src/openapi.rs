//! The OpenAPI 3.0 document of the API (`GET /openapi.json`), written out by hand: the routes,
//! their parameters and responses, and the `Handler` and `EventEnvelopeWithMetadata` models
//! as the Python server declares them.

use serde_json::{Value, json};

fn op(summary: &str, params: Value, body: Option<Value>, responses: Value) -> Value {
    let mut op = json!({ "summary": summary, "parameters": params, "responses": responses });
    if let Some(body) = body {
        op["requestBody"] = json!({
            "required": false,
            "content": { "application/json": { "schema": body } }
        });
    }
    op
}

fn path_param(name: &str) -> Value {
    json!({ "in": "path", "name": name, "required": true, "schema": { "type": "string" } })
}

fn query_param(name: &str, ty: &str) -> Value {
    json!({ "in": "query", "name": name, "required": false, "schema": { "type": ty } })
}

fn handler_ref() -> Value {
    json!({ "description": "Handler", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Handler" } } } })
}

fn desc(text: &str) -> Value {
    json!({ "description": text })
}

pub(crate) fn document() -> Value {
    let run_body = json!({
        "type": "object",
        "properties": {
            "start_event": { "type": "object", "description": "The start event's payload, or an envelope {type, value}" },
            "handler_id": { "type": "string" },
            "context": { "type": "object" },
            "kwargs": { "type": "object" }
        }
    });
    let name = path_param("name");
    let id = path_param("handler_id");
    json!({
        "openapi": "3.0.0",
        "info": { "title": "Workflows API", "version": env!("CARGO_PKG_VERSION") },
        "paths": {
            "/health": { "get": op("Health check", json!([]), None, json!({ "200": desc("Healthy") })) },
            "/workflows": { "get": op("List workflows", json!([]), None, json!({ "200": desc("List of workflow names") })) },
            "/workflows/{name}/run": { "post": op("Run workflow (wait)", json!([name]), Some(run_body.clone()), json!({
                "200": handler_ref(), "400": desc("Invalid start_event payload"),
                "404": desc("Workflow not found"), "409": desc("handler_id already used"),
                "500": desc("The run failed"), "503": desc("Too many runs in flight") })) },
            "/workflows/{name}/run-nowait": { "post": op("Run workflow (no-wait)", json!([name]), Some(run_body), json!({
                "200": handler_ref(), "400": desc("Invalid start_event payload"),
                "404": desc("Workflow not found"), "503": desc("Too many runs in flight") })) },
            "/workflows/{name}/schema": { "get": op("Start and stop event schemas", json!([name]), None, json!({ "200": desc("{start, stop}"), "404": desc("Workflow not found") })) },
            "/workflows/{name}/events": { "get": op("Event schemas", json!([name]), None, json!({ "200": desc("{events}"), "404": desc("Workflow not found") })) },
            "/workflows/{name}/representation": { "get": op("Workflow graph", json!([name]), None, json!({ "200": desc("{graph}"), "404": desc("Workflow not found") })) },
            "/handlers": { "get": op("List handlers", json!([query_param("status", "string"), query_param("workflow_name", "string")]), None, json!({
                "200": { "description": "Handlers", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/HandlersList" } } } } })) },
            "/handlers/{handler_id}": { "get": op("Get handler", json!([id]), None, json!({
                "200": handler_ref(), "202": handler_ref(), "404": desc("Handler not found"), "500": handler_ref() })) },
            "/handlers/{handler_id}/cancel": { "post": op("Cancel handler", json!([id, query_param("purge", "boolean")]), None, json!({
                "200": desc("{status: cancelled | deleted}"), "404": desc("Handler not found") })) },
            "/results/{handler_id}": { "get": op("Get result", json!([id]), None, json!({
                "200": handler_ref(), "202": handler_ref(), "404": desc("Handler not found"), "500": handler_ref() })) },
            "/events/{handler_id}": {
                "get": op("Stream events", json!([id, query_param("sse", "boolean"), query_param("after_sequence", "string"),
                        query_param("include_internal", "boolean"), query_param("include_qualified_name", "boolean")]), None, json!({
                    "200": { "description": "text/event-stream (id: sequence) or application/x-ndjson" },
                    "204": desc("Nothing left: the run has ended"), "400": desc("Invalid after_sequence"), "404": desc("Handler not found") })),
                "post": op("Send event", json!([id]), Some(json!({ "type": "object", "properties": {
                        "event": { "$ref": "#/components/schemas/EventEnvelopeWithMetadata" }, "step": { "type": "string" } }, "required": ["event"] })),
                    json!({ "200": desc("{status: sent}"), "400": desc("Invalid event"), "404": desc("Handler not found"), "409": desc("Workflow already completed") }))
            },
            "/openapi.json": { "get": op("This document", json!([]), None, json!({ "200": desc("OpenAPI 3.0") })) }
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "EventEnvelopeWithMetadata": {
                    "type": "object",
                    "properties": {
                        "value": { "type": "object" },
                        "types": { "type": "array", "items": { "type": "string" }, "nullable": true },
                        "type": { "type": "string" },
                        "qualified_name": { "type": "string", "nullable": true }
                    },
                    "required": ["value", "type"]
                },
                "Handler": {
                    "type": "object",
                    "properties": {
                        "handler_id": { "type": "string" },
                        "workflow_name": { "type": "string" },
                        "run_id": { "type": "string", "nullable": true },
                        "status": { "type": "string", "enum": ["running", "completed", "failed", "cancelled"] },
                        "started_at": { "type": "string", "format": "date-time" },
                        "updated_at": { "type": "string", "format": "date-time", "nullable": true },
                        "completed_at": { "type": "string", "format": "date-time", "nullable": true },
                        "error": { "type": "string", "nullable": true },
                        "result": { "oneOf": [{ "$ref": "#/components/schemas/EventEnvelopeWithMetadata" }, { "type": "null" }] }
                    },
                    "required": ["handler_id", "workflow_name", "status", "started_at"]
                },
                "HandlersList": {
                    "type": "object",
                    "properties": { "handlers": { "type": "array", "items": { "$ref": "#/components/schemas/Handler" } } },
                    "required": ["handlers"]
                }
            }
        }
    })
}
