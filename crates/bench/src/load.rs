//! A small HTTP/1.1 load generator: `connections` keep-alive connections, each sending its
//! next request as soon as the previous answer is read, for a time or a number of requests.
//! Latency is measured per request, from writing the request to reading the whole body.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

pub type Req = Request<Full<Bytes>>;

#[derive(Debug, Clone, Copy)]
pub enum Budget {
    Time(Duration),
    Count(u64),
}

/// What one run measured.
#[derive(Debug, Default)]
pub struct Stat {
    pub ok: u64,
    pub errors: u64,
    pub secs: f64,
    lat_us: Vec<u32>,
    /// Bodies of successful answers, when asked for (to learn the ids a launch made).
    pub bodies: Vec<Bytes>,
    /// The first few failures, as "status: body" or "no answer", so that an error in the
    /// table can be explained.
    pub failures: Vec<String>,
}

/// Failures kept per run.
const KEEP_FAILURES: usize = 5;

impl Stat {
    fn fail(&mut self, what: String) {
        self.errors += 1;
        if self.failures.len() < KEEP_FAILURES {
            self.failures.push(what);
        }
    }
}

impl Stat {
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.secs
    }

    /// The `p`-th percentile latency in milliseconds.
    pub fn pct_ms(&self, p: f64) -> f64 {
        percentile_ms(&self.lat_us, p)
    }
}

pub fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_us.len() as f64 - 1.0) * p / 100.0).round() as usize;
    sorted_us[i] as f64 / 1000.0
}

/// Runs requests made by `make(i)` against `addr`.
pub async fn drive(
    addr: SocketAddr,
    connections: usize,
    budget: Budget,
    keep_bodies: bool,
    make: impl Fn(u64) -> Req + Send + Sync + 'static,
) -> Stat {
    let make = Arc::new(make);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (make, next) = (make.clone(), next.clone());
        set.spawn(
            async move { one_connection(addr, budget, start, keep_bodies, &*make, &next).await },
        );
    }
    let mut stat = Stat::default();
    while let Some(part) = set.join_next().await {
        let part = part.expect("load connection panicked");
        stat.ok += part.ok;
        stat.errors += part.errors;
        stat.lat_us.extend(part.lat_us);
        stat.bodies.extend(part.bodies);
        let room = KEEP_FAILURES.saturating_sub(stat.failures.len());
        stat.failures.extend(part.failures.into_iter().take(room));
    }
    stat.secs = start.elapsed().as_secs_f64();
    stat.lat_us.sort_unstable();
    stat
}

async fn one_connection(
    addr: SocketAddr,
    budget: Budget,
    start: Instant,
    keep_bodies: bool,
    make: &(dyn Fn(u64) -> Req + Send + Sync),
    next: &AtomicU64,
) -> Stat {
    let mut stat = Stat::default();
    let mut sender: Option<Sender> = None;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        match budget {
            Budget::Count(n) if i >= n => break,
            Budget::Time(d) if start.elapsed() >= d => break,
            _ => {}
        }
        let t0 = Instant::now();
        let tried =
            tokio::time::timeout(NO_ANSWER, send(addr, &mut sender, || make(i), keep_bodies));
        let answer = match tried.await {
            Ok(answer) => answer,
            Err(_) => {
                // Its connection may still get the late answer: never used again.
                sender = None;
                stat.fail(format!("no answer within {} s", NO_ANSWER.as_secs()));
                continue;
            }
        };
        let us = t0.elapsed().as_micros().min(u32::MAX as u128) as u32;
        match answer {
            Some((status, body)) if (200..300).contains(&status) => {
                stat.ok += 1;
                stat.lat_us.push(us);
                if keep_bodies {
                    stat.bodies.push(body);
                }
            }
            Some((status, body)) => {
                let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                stat.fail(format!("{status}: {text}"));
            }
            None => stat.fail("no answer (connection lost after the request was sent)".into()),
        }
    }
    stat
}

/// A request unanswered this long is counted as failed (and reported), so that a server
/// that never answers one shows in the results instead of holding the benchmark forever.
const NO_ANSWER: Duration = Duration::from_secs(60);

/// Sends one request on `sender` (connecting first when there is none or it is closed) and
/// reads its answer: the status and the body, or None when the connection was lost after
/// the request was sent. A server that closes the connection after each answer (moto's
/// answers carry `Connection: close`) costs a new connection per request, inside the
/// latency, as it would for any client; a request that never reached the server is sent
/// again.
async fn send(
    addr: SocketAddr,
    sender: &mut Option<Sender>,
    make: impl Fn() -> Req,
    keep_bodies: bool,
) -> Option<(u16, Bytes)> {
    let mut answer = None;
    for _ in 0..3 {
        let ready = match sender.as_mut() {
            Some(tx) => tx.ready().await.is_ok(),
            None => false,
        };
        if !ready {
            *sender = connect(addr).await;
        }
        let Some(tx) = sender.as_mut() else {
            continue;
        };
        match tx.try_send_request(make()).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                answer = read_body(resp.into_body(), keep_bodies)
                    .await
                    .map(|b| (status, b));
                break;
            }
            Err(mut e) => {
                *sender = None;
                if e.take_message().is_none() {
                    break; // it was sent: the answer is lost, an error
                } // not sent: try again
            }
        }
    }
    answer
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// The whole body when `keep`, else only its first bytes (for an error's text): every
/// byte is still read, but a 6 MB list is not copied into one buffer per answer, work of
/// this process's that would take CPU from the server under test on the same machine.
async fn read_body(mut body: hyper::body::Incoming, keep: bool) -> Option<Bytes> {
    if keep {
        return body.collect().await.ok().map(|b| b.to_bytes());
    }
    let mut head = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.ok()?.into_data() {
            let room = 300usize.saturating_sub(head.len());
            head.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    Some(head.into())
}

async fn connect(addr: SocketAddr) -> Option<Sender> {
    let stream = TcpStream::connect(addr).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(tx)
}

/// One request on a fresh connection; the status and the body.
pub async fn once(addr: SocketAddr, req: Req) -> (u16, Bytes) {
    let mut tx = connect(addr).await.expect("connect");
    let resp = tx.send_request(req).await.expect("request");
    let status = resp.status().as_u16();
    (
        status,
        resp.into_body().collect().await.expect("body").to_bytes(),
    )
}
