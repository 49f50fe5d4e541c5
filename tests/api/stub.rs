//! A local HTTP server standing in for an SMS provider (webhook receiver, Twilio's API): answers with
//! scripted statuses, can hang on chosen requests, and records what it received.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;

#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: String,
    /// What the stub answered (for `Hang`, what it would have: 200).
    pub status: u16,
    pub at: std::time::Instant,
}

#[derive(Clone, Copy, Debug)]
pub enum Reply {
    Status(u16),
    /// Never answers (within any sane timeout).
    Hang,
    /// Answers 200 after this many milliseconds.
    Slow(u64),
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Reply>,
    received: Vec<Received>,
    in_flight: usize,
    max_in_flight: usize,
    /// Until then, every request is answered with this status (an outage), before the script.
    failing: Option<(std::time::Instant, u16)>,
}

#[derive(Clone, Default)]
pub struct Stub {
    inner: Arc<Mutex<Inner>>,
    pub addr: Option<SocketAddr>,
}

async fn handle(State(stub): State<Stub>, uri: Uri, headers: HeaderMap, body: Bytes) -> StatusCode {
    let reply = {
        let mut inner = stub.inner.lock().unwrap();
        let reply = match inner.failing {
            Some((until, status)) if std::time::Instant::now() < until => Reply::Status(status),
            _ => inner.script.pop_front().unwrap_or(Reply::Status(200)),
        };
        inner.received.push(Received {
            path: uri.path().to_owned(),
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            status: match reply {
                Reply::Status(s) => s,
                Reply::Hang | Reply::Slow(_) => 200,
            },
            at: std::time::Instant::now(),
        });
        inner.in_flight += 1;
        inner.max_in_flight = inner.max_in_flight.max(inner.in_flight);
        reply
    };
    let status = match reply {
        Reply::Status(s) => StatusCode::from_u16(s).unwrap(),
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            StatusCode::OK
        }
        Reply::Slow(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            StatusCode::OK
        }
    };
    stub.inner.lock().unwrap().in_flight -= 1;
    status
}

impl Stub {
    /// Starts the stub on 127.0.0.1; `script` is the replies of the first requests, then 200s.
    pub async fn start(script: impl IntoIterator<Item = Reply>) -> Stub {
        let mut stub = Stub::default();
        stub.inner.lock().unwrap().script = script.into_iter().collect();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        stub.addr = Some(listener.local_addr().unwrap());
        let app = Router::new()
            .route("/{*path}", post(handle))
            .with_state(stub.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        stub
    }

    /// From now on, answers `status` to every request for `outage` (then the script, then 200s).
    pub fn fail_for(&self, outage: Duration, status: u16) {
        self.inner.lock().unwrap().failing = Some((std::time::Instant::now() + outage, status));
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr.unwrap(), path)
    }

    /// The most requests that were being answered at the same moment.
    pub fn max_in_flight(&self) -> usize {
        self.inner.lock().unwrap().max_in_flight
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().unwrap().received.clone()
    }

    /// Waits (at most 10 s) until at least `n` requests arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        for _ in 0..1000 {
            let r = self.received();
            if r.len() >= n {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the stub got {} requests, expected {n}", self.received().len());
    }
}
