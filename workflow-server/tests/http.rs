//! Every route of the protocol over real HTTP on 127.0.0.1: status codes, bodies, SSE
//! sequence numbers and resumption, concurrent readers, disconnects, auth, limits.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn id_of(reply: &Reply) -> String {
    reply.json()["handler_id"].as_str().unwrap().to_string()
}

async fn handler_count(addr: std::net::SocketAddr) -> usize {
    get(addr, "/handlers").await.json()["handlers"]
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_workflows_schemas_graph_and_openapi() {
    let addr = spawn(server()).await;
    let health = get(addr, "/health").await;
    assert_eq!(
        (health.status, health.json()),
        (200, json!({ "status": "healthy" }))
    );

    let list = get(addr, "/workflows").await.json();
    assert_eq!(
        list,
        json!({ "workflows": ["approval", "report", "ticker"] })
    );

    let schema = get(addr, "/workflows/report/schema").await;
    assert_eq!(schema.status, 200);
    let schema = schema.json();
    assert_eq!(schema["start"]["title"], "Topic");
    assert_eq!(schema["start"]["required"], json!(["topic", "steps"]));
    assert_eq!(schema["stop"]["properties"]["result"]["type"], "string");

    let missing = get(addr, "/workflows/nope/schema").await;
    assert_eq!(
        (missing.status, missing.json()),
        (404, json!({ "detail": "Workflow not found" }))
    );
    assert_eq!(get(addr, "/workflows/nope/events").await.status, 404);
    assert_eq!(
        get(addr, "/workflows/nope/representation").await.status,
        404
    );

    let events = get(addr, "/workflows/approval/events").await.json();
    let titles: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["title"].as_str().unwrap())
        .collect();
    assert!(
        titles.contains(&"Review") && titles.contains(&"Verdict") && titles.contains(&"Topic"),
        "{titles:?}"
    );

    let graph = get(addr, "/workflows/approval/representation").await.json()["graph"].clone();
    assert_eq!(graph["name"], "Approval");
    let review = graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "Review")
        .unwrap();
    assert_eq!(
        review["event_types"],
        json!(["Review", "InputRequiredEvent", "Event"])
    );
    assert!(
        graph["edges"]
            .as_array()
            .unwrap()
            .contains(&json!({ "source": "propose", "target": "Review" }))
    );

    let doc = get(addr, "/openapi.json").await.json();
    assert_eq!(doc["openapi"], "3.0.0");
    for path in [
        "/health",
        "/workflows/{name}/run",
        "/events/{handler_id}",
        "/handlers/{handler_id}/cancel",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path}");
    }
    assert_eq!(get(addr, "/no/such/route").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_waits_and_answers_the_handler_with_its_result() {
    let addr = spawn(server()).await;
    let reply = post(
        addr,
        "/workflows/report/run",
        r#"{"start_event": {"topic": "tides", "steps": 3}}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let data = reply.json();
    assert_eq!(data["status"], "completed");
    assert_eq!(data["workflow_name"], "report");
    assert_eq!(data["error"], Value::Null);
    assert_eq!(
        data["result"],
        json!({ "value": { "result": "report on tides in 3 steps" }, "type": "StopEvent",
                "types": null, "qualified_name": "workflows.events.StopEvent" })
    );
    assert!(data["started_at"].as_str().unwrap().ends_with("+00:00"));
    assert!(data["completed_at"].is_string());

    // The envelope the Python client sends for `run_workflow_nowait(start_event=StartEvent(..))`.
    let enveloped = post(addr, "/workflows/report/run",
        r#"{"start_event": {"type": "StartEvent", "qualified_name": "workflows.events.StartEvent", "value": {"topic": "x", "steps": 0}}, "context": {}}"#).await;
    assert_eq!(enveloped.status, 200, "{}", enveloped.body);

    // A failing run: 500 with the handler, its error named.
    let failed = post(
        addr,
        "/workflows/report/run",
        r#"{"start_event": {"topic": "fail", "steps": 1}}"#,
    )
    .await;
    assert_eq!(failed.status, 500);
    let data = failed.json();
    assert_eq!(data["status"], "failed");
    assert!(
        data["error"]
            .as_str()
            .unwrap()
            .contains("the topic is cursed"),
        "{data}"
    );
    let events = Sse::open(
        addr,
        &format!("/events/{}?after_sequence=-1", id_of(&failed)),
        &[],
    )
    .await
    .1
    .events()
    .await;
    assert_eq!(events.last().unwrap().1["type"], "WorkflowFailedEvent");
    assert_eq!(events.last().unwrap().1["value"]["step_name"], "write");
}

#[tokio::test(flavor = "current_thread")]
async fn bad_start_payloads_are_refused_before_anything_runs() {
    let addr = spawn(server()).await;
    let cases = [
        (
            r#"{"start_event": {"topic": "x"}}"#,
            "missing field `steps`",
        ),
        (
            r#"{"start_event": {"topic": "x", "steps": "three"}}"#,
            "steps",
        ),
        (
            r#"{"start_event": {"type": "Review", "value": {}}}"#,
            "Start event must be a StartEvent",
        ),
        (
            r#"{"start_event": {"topic": "x", "steps": 1}, "context": {"state": 1}}"#,
            "Context API is disabled",
        ),
        (r#"{"handler_id": 7}"#, "handler_id"),
        ("not json", "Invalid JSON body"),
    ];
    for (body, needle) in cases {
        let reply = post(addr, "/workflows/report/run-nowait", body).await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.body);
        let detail = reply.json()["detail"].as_str().unwrap().to_string();
        assert!(detail.contains(needle), "{body}: {detail}");
    }
    assert_eq!(
        handler_count(addr).await,
        0,
        "a refused payload started a run"
    );
    let unknown = post(addr, "/workflows/nope/run", "{}").await;
    assert_eq!(
        (unknown.status, unknown.json()["detail"].clone()),
        (404, json!("Workflow not found"))
    );

    // A handler id can be chosen, once.
    let first = post(
        addr,
        "/workflows/ticker/run-nowait",
        r#"{"start_event": 1, "handler_id": "mine"}"#,
    )
    .await;
    assert_eq!((first.status, id_of(&first)), (200, "mine".to_string()));
    let again = post(
        addr,
        "/workflows/ticker/run-nowait",
        r#"{"start_event": 1, "handler_id": "mine"}"#,
    )
    .await;
    assert_eq!(again.status, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_numbers_events_and_resumes_without_gap_or_duplicate() {
    let addr = spawn(server()).await;
    let started = post(
        addr,
        "/workflows/report/run-nowait",
        r#"{"start_event": {"topic": "t", "steps": 20}}"#,
    )
    .await;
    assert_eq!(started.status, 200);
    assert_eq!(started.json()["status"], "running");
    let id = id_of(&started);

    // Read the first five, then drop the connection.
    let (status, mut first) =
        Sse::open(addr, &format!("/events/{id}?after_sequence=-1"), &[]).await;
    assert_eq!(status, 200);
    let mut seen = Vec::new();
    while seen.len() < 5 {
        if let Some(Frame::Event(seq, ev)) = first.next().await {
            seen.push((seq, ev));
        }
    }
    drop(first);
    // Resume from the last id, as a browser's EventSource does.
    let last = seen.last().unwrap().0.to_string();
    let (_, mut rest) =
        Sse::open(addr, &format!("/events/{id}"), &[("Last-Event-ID", &last)]).await;
    seen.extend(rest.events().await);

    let ids: Vec<u64> = seen.iter().map(|(s, _)| *s).collect();
    assert_eq!(ids, (0..=20).collect::<Vec<u64>>(), "a gap or a duplicate");
    for (i, (_, ev)) in seen.iter().take(20).enumerate() {
        assert_eq!(ev["type"], "Progress");
        assert_eq!(ev["value"], json!({ "done": i + 1, "of": 20 }));
        assert!(
            ev["qualified_name"]
                .as_str()
                .unwrap()
                .ends_with("::Progress")
        );
    }
    assert_eq!(seen[20].1["type"], "StopEvent");
    assert_eq!(seen[20].1["value"]["result"], "report on t in 20 steps");

    // `after_sequence` does the same; past the end there is nothing: 204.
    let tail = Sse::open(addr, &format!("/events/{id}?after_sequence=17"), &[])
        .await
        .1
        .events()
        .await;
    assert_eq!(
        tail.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![18, 19, 20]
    );
    assert_eq!(
        get(addr, &format!("/events/{id}?after_sequence=20"))
            .await
            .status,
        204
    );
    assert_eq!(
        get(addr, &format!("/events/{id}")).await.status,
        204,
        "`now` on an ended run"
    );
    let bad = get(addr, &format!("/events/{id}?after_sequence=soon")).await;
    assert_eq!(
        (bad.status, bad.json()["detail"].clone()),
        (400, json!("Invalid after_sequence: 'soon'"))
    );
    assert_eq!(get(addr, "/events/nope").await.status, 404);

    // NDJSON when `sse=false`, without qualified names when asked.
    let nd = get(
        addr,
        &format!("/events/{id}?sse=false&after_sequence=18&include_qualified_name=false"),
    )
    .await;
    assert_eq!(nd.status, 200);
    assert_eq!(nd.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<Value> = nd
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["qualified_name"], Value::Null);
    assert_eq!(lines[1]["type"], "StopEvent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_readers_see_the_same_events_and_a_reader_that_leaves_does_not_stop_the_run() {
    let addr = spawn(server()).await;
    let id = id_of(
        &post(
            addr,
            "/workflows/ticker/run-nowait",
            r#"{"start_event": 15}"#,
        )
        .await,
    );
    let path = format!("/events/{id}?after_sequence=-1");
    let (a, b, leaver) = tokio::join!(
        async { Sse::open(addr, &path, &[]).await.1.events().await },
        async { Sse::open(addr, &path, &[]).await.1.events().await },
        async {
            let (_, mut sse) = Sse::open(addr, &path, &[]).await;
            let first = sse.next().await;
            drop(sse); // the client goes away mid-stream
            first
        },
    );
    assert!(matches!(leaver, Some(Frame::Event(0, _))));
    assert_eq!(a, b);
    assert_eq!(a.len(), 16);
    assert_eq!(a[15].1["value"]["result"], 15);
    let data = wait_ended(addr, &id).await;
    assert_eq!(data["status"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_human_answers_through_post_events() {
    let addr = spawn(server().heartbeat(Some(Duration::from_millis(30)))).await;
    let id = id_of(
        &post(
            addr,
            "/workflows/approval/run-nowait",
            r#"{"start_event": {"topic": "rust", "steps": 0}}"#,
        )
        .await,
    );
    let (_, mut sse) = Sse::open(addr, &format!("/events/{id}?after_sequence=-1"), &[]).await;
    let Some(Frame::Event(0, review)) = sse.next().await else {
        panic!("no request")
    };
    assert_eq!(review["type"], "Review");
    assert_eq!(review["types"], json!(["InputRequiredEvent"]));
    assert_eq!(review["value"], json!({ "text": "post about rust" }));
    // The run waits: the idle stream gets heartbeats; the handler says running (202).
    assert_eq!(sse.next().await, Some(Frame::Heartbeat));
    assert_eq!(get(addr, &format!("/handlers/{id}")).await.status, 202);
    assert_eq!(get(addr, &format!("/results/{id}")).await.status, 202);

    // Refused answers change nothing.
    let bad = [
        ("not json", 400, "Error processing request"),
        (r#"{"step": "decide"}"#, 400, "Event data is required"),
        (
            r#"{"event": {"type": "Nope", "value": {}}}"#,
            400,
            "Invalid event type: Nope",
        ),
        (
            r#"{"event": {"type": "Verdict", "value": {"approved": "yes"}}}"#,
            400,
            "approved",
        ),
        (
            r#"{"event": {"value": {"approved": true}}}"#,
            400,
            "Must have a type or a qualified name",
        ),
        (
            r#"{"event": {"type": "Verdict", "value": {"approved": true}}, "step": "nope"}"#,
            400,
            "nope",
        ),
    ];
    for (body, status, needle) in bad {
        let reply = post(addr, &format!("/events/{id}"), body).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.body);
        assert!(
            reply.json()["detail"].as_str().unwrap().contains(needle),
            "{body}: {}",
            reply.body
        );
    }
    assert_eq!(
        post(
            addr,
            "/events/nope",
            r#"{"event": {"type": "Verdict", "value": {"approved": true}}}"#
        )
        .await
        .status,
        404
    );

    // A stringified envelope, as some clients send.
    let answer =
        json!({ "event": json!({ "type": "Verdict", "value": { "approved": true } }).to_string() });
    let sent = post(addr, &format!("/events/{id}"), &answer.to_string()).await;
    assert_eq!(
        (sent.status, sent.json()),
        (200, json!({ "status": "sent" }))
    );
    let rest = sse.events().await;
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].0, 1);
    assert_eq!(rest[0].1["value"]["result"], true);

    let result = get(addr, &format!("/results/{id}")).await;
    assert_eq!(
        (result.status, result.json()["result"].clone()),
        (200, json!(true))
    );
    let late = post(
        addr,
        &format!("/events/{id}"),
        r#"{"event": {"type": "Verdict", "value": {"approved": false}}}"#,
    )
    .await;
    assert_eq!(
        (late.status, late.json()["detail"].clone()),
        (409, json!("Workflow already completed"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_purge() {
    let addr = spawn(server()).await;
    let id = id_of(
        &post(
            addr,
            "/workflows/ticker/run-nowait",
            r#"{"start_event": 100000}"#,
        )
        .await,
    );
    let (_, mut sse) = Sse::open(addr, &format!("/events/{id}?after_sequence=-1"), &[]).await;
    assert!(matches!(sse.next().await, Some(Frame::Event(0, _))));
    let cancelled = post(addr, &format!("/handlers/{id}/cancel"), "").await;
    assert_eq!(
        (cancelled.status, cancelled.json()),
        (200, json!({ "status": "cancelled" }))
    );
    let events = sse.events().await;
    assert_eq!(events.last().unwrap().1["type"], "WorkflowCancelledEvent");
    assert_eq!(events.last().unwrap().1["types"], json!(["StopEvent"]));
    let data = get(addr, &format!("/handlers/{id}")).await;
    assert_eq!(
        (data.status, data.json()["status"].clone()),
        (500, json!("cancelled"))
    );
    // An ended handler cannot be cancelled (404, as the Python server says), but purged.
    assert_eq!(
        post(addr, &format!("/handlers/{id}/cancel"), "")
            .await
            .status,
        404
    );
    let purged = post(addr, &format!("/handlers/{id}/cancel?purge=true"), "").await;
    assert_eq!(
        (purged.status, purged.json()),
        (200, json!({ "status": "deleted" }))
    );
    assert_eq!(get(addr, &format!("/handlers/{id}")).await.status, 404);
    assert_eq!(post(addr, "/handlers/nope/cancel", "").await.status, 404);
    assert_eq!(get(addr, "/results/nope").await.status, 404);
}

#[tokio::test(flavor = "current_thread")]
async fn handlers_are_listed_and_filtered() {
    let addr = spawn(server()).await;
    let done = id_of(
        &post(
            addr,
            "/workflows/report/run",
            r#"{"start_event": {"topic": "a", "steps": 1}}"#,
        )
        .await,
    );
    let waiting = id_of(
        &post(
            addr,
            "/workflows/approval/run-nowait",
            r#"{"start_event": {"topic": "b", "steps": 0}}"#,
        )
        .await,
    );
    let ids = |v: Value| -> Vec<String> {
        v["handlers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["handler_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids(get(addr, "/handlers").await.json()),
        vec![done.clone(), waiting.clone()]
    );
    assert_eq!(
        ids(get(addr, "/handlers?status=running").await.json()),
        vec![waiting.clone()]
    );
    assert_eq!(
        ids(get(addr, "/handlers?status=completed&status=failed")
            .await
            .json()),
        vec![done.clone()]
    );
    assert_eq!(
        ids(get(addr, "/handlers?workflow_name=report").await.json()),
        vec![done.clone()]
    );
    assert_eq!(
        ids(get(addr, "/handlers?workflow_name=report&status=running")
            .await
            .json()),
        Vec::<String>::new()
    );
    assert_eq!(ids(get(addr, "/handlers?status=").await.json()).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_guards_everything_but_health() {
    let addr = spawn(server().auth_token("s3cret")).await;
    assert_eq!(get(addr, "/health").await.status, 200);
    for (method, path) in [
        ("GET", "/workflows"),
        ("POST", "/workflows/ticker/run"),
        ("POST", "/workflows/ticker/run-nowait"),
        ("GET", "/events/x"),
        ("POST", "/events/x"),
        ("POST", "/handlers/x/cancel"),
        ("GET", "/handlers"),
    ] {
        let reply = request(addr, method, path, &[], Some(r#"{"start_event": 1}"#)).await;
        assert_eq!(
            (reply.status, reply.json()),
            (401, json!({ "detail": "Unauthorized" })),
            "{method} {path}"
        );
        let wrong = request(
            addr,
            method,
            path,
            &[("Authorization", "Bearer nope")],
            Some("{}"),
        )
        .await;
        assert_eq!(wrong.status, 401, "{method} {path}");
    }
    assert_eq!(
        handler_count_auth(addr).await,
        0,
        "a refused request started a run"
    );
    let ok = request(
        addr,
        "POST",
        "/workflows/ticker/run",
        &[("Authorization", "Bearer s3cret")],
        Some(r#"{"start_event": 2}"#),
    )
    .await;
    assert_eq!(ok.status, 200);
}

async fn handler_count_auth(addr: std::net::SocketAddr) -> usize {
    request(
        addr,
        "GET",
        "/handlers",
        &[("Authorization", "Bearer s3cret")],
        None,
    )
    .await
    .json()["handlers"]
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_cors_and_traceparent() {
    let addr = spawn(server().body_limit(64).max_concurrent_runs(1)).await;
    let big = format!(
        r#"{{"start_event": {{"topic": "{}", "steps": 1}}}}"#,
        "x".repeat(100)
    );
    assert_eq!(post(addr, "/workflows/report/run", &big).await.status, 413);

    let first = request(
        addr,
        "POST",
        "/workflows/ticker/run-nowait",
        &[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )],
        Some(r#"{"start_event": 100000}"#),
    )
    .await;
    assert_eq!(first.status, 200);
    let second = post(
        addr,
        "/workflows/ticker/run-nowait",
        r#"{"start_event": 1}"#,
    )
    .await;
    assert_eq!(
        (second.status, second.json()["detail"].clone()),
        (503, json!("Too many runs in flight: try again later"))
    );
    post(addr, &format!("/handlers/{}/cancel", id_of(&first)), "").await;
    let third = post(addr, "/workflows/ticker/run", r#"{"start_event": 1}"#).await;
    assert_eq!(third.status, 200, "the cap frees its slot when a run ends");

    // CORS is closed unless configured.
    let preflight = [
        ("Origin", "https://app.example"),
        ("Access-Control-Request-Method", "POST"),
    ];
    let closed = request(addr, "OPTIONS", "/workflows", &preflight, None).await;
    assert_eq!(closed.header("access-control-allow-origin"), None);
    let open = spawn(server().cors_origins(["https://app.example"])).await;
    let allowed = request(open, "OPTIONS", "/workflows", &preflight, None).await;
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let other = request(
        open,
        "GET",
        "/workflows",
        &[("Origin", "https://evil.example")],
        None,
    )
    .await;
    assert_eq!(other.header("access-control-allow-origin"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_mounts_at_the_root_and_the_router_nests() {
    use axum::routing::get as route_get;
    let page = axum::Router::new()
        .route("/", route_get(|| async { "<html>debugger</html>" }))
        .route("/assets/app.js", route_get(|| async { "console.log(1)" }));
    let api = server().auth_token("t").page(page);
    let app = axum::Router::new().nest("/api", api.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    assert_eq!(get(addr, "/api").await.body, "<html>debugger</html>");
    assert_eq!(get(addr, "/api/assets/app.js").await.body, "console.log(1)");
    assert_eq!(get(addr, "/api/health").await.status, 200);
    assert_eq!(get(addr, "/api/workflows").await.status, 401);

    // Served on its own, the page is the root.
    let page = axum::Router::new().route("/", route_get(|| async { "<html>debugger</html>" }));
    let addr = spawn(server().page(page)).await;
    assert_eq!(get(addr, "/").await.body, "<html>debugger</html>");
    assert_eq!(get(addr, "/workflows").await.status, 200);
}
