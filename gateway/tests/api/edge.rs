//! The HTTP edge: what a client that sends half a request, stalls mid-body or opens too many
//! connections can hold.

use crate::helpers::spawn_app;
use axum::Router;
use axum::routing::get;
use gateway::server::{Limits, serve_with};
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Serves a one-route router with `limits`; the address and the token that stops it.
async fn serve_small(limits: Limits) -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let router = Router::new().route("/", get(|| async { "ok" }));
    let draining = CancellationToken::new();
    tokio::spawn(serve_with(
        listener,
        router,
        draining.clone(),
        Duration::from_secs(1),
        limits,
    ));
    (address, draining)
}

/// Reads until the peer closes (or `within` passes); what was read.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut answer = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut answer))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test]
async fn a_connection_that_sends_half_a_request_head_is_closed_at_the_head_timeout() {
    let head_timeout = Duration::from_secs(1);
    let (address, _stop) = serve_small(Limits {
        head_timeout,
        ..Limits::default()
    })
    .await;
    let mut slow = TcpStream::connect(&address).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let answer = read_to_close(&mut slow, Duration::from_secs(10)).await;
    assert!(answer.is_some(), "the half-sent request is still held");
    assert!(started.elapsed() >= head_timeout - Duration::from_millis(100));
    assert!(!answer.unwrap().contains("200 OK"));
}

#[tokio::test]
async fn a_thousand_slowloris_connections_are_all_closed_and_hold_nobody_else_up() {
    let head_timeout = Duration::from_secs(2);
    let (address, _stop) = serve_small(Limits {
        head_timeout,
        ..Limits::default()
    })
    .await;
    // Half of them send half a request head; the other half connect and send nothing.
    let mut attackers = Vec::with_capacity(1_000);
    for n in 0..1_000 {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        if n % 2 == 0 {
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
                .await
                .unwrap();
        }
        attackers.push(stream);
    }
    let attack_began = Instant::now();

    let mut honest = TcpStream::connect(&address).await.unwrap();
    honest
        .write_all(b"GET / HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut honest, Duration::from_secs(1))
        .await
        .expect("an honest request is served within a second during the attack");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");

    let closed = futures::future::join_all(
        attackers
            .iter_mut()
            .map(|stream| read_to_close(stream, head_timeout + Duration::from_secs(8))),
    )
    .await;
    let held = closed.iter().filter(|answer| answer.is_none()).count();
    assert_eq!(held, 0, "connections still held by the server");
    let elapsed = attack_began.elapsed();
    assert!(
        elapsed >= head_timeout - Duration::from_millis(100),
        "closed at the head timeout, not before: {elapsed:?}"
    );
    assert!(
        closed
            .iter()
            .flatten()
            .all(|answer| !answer.contains("200 OK")),
        "no slowloris request was served"
    );
}

#[tokio::test]
async fn past_the_connection_cap_a_new_connection_waits_until_one_closes() {
    let (address, _stop) = serve_small(Limits {
        max_connections: 2,
        ..Limits::default()
    })
    .await;
    let first = TcpStream::connect(&address).await.unwrap();
    let _second = TcpStream::connect(&address).await.unwrap();
    // Let the server accept both before the third arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(&address).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_to_close(&mut third, Duration::from_millis(500)).await,
        None,
        "a third connection is served while two are open"
    );

    drop(first);
    let answer = read_to_close(&mut third, Duration::from_secs(5))
        .await
        .expect("served once a slot is free");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
}

#[tokio::test]
async fn a_body_that_stalls_is_answered_408_in_json_and_charges_nothing() {
    let app = spawn_app().await;
    let token = app.hs256(&app.claims("alice"));
    let address = app.address.trim_start_matches("http://");
    let mut stalled = TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /tasks HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"mandate\": \"so"
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let answer = read_to_close(&mut stalled, Duration::from_secs(15))
        .await
        .expect("the stalled request is answered and closed");
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "before the request timeout"
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "request_timeout");
    assert!(
        app.redis_keys().await.is_empty(),
        "nothing was recorded or charged"
    );
    assert!(app.next_message().await.is_none());
}
