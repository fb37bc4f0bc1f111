//! The accept loop's tests: stopping, event streams on the viewers' runtime, the gate.

use super::*;

mod clients_that_leave;

/// While a new connection is peeked at (for an event stream) nothing has been said on it:
/// stopping closes it at once instead of waiting out the header timeout.
#[tokio::test]
async fn stopping_closes_a_connection_that_has_said_nothing_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let limits = HttpLimits::default();
        let metrics = Arc::new(HttpMetrics::default());
        let stopped = async {
            let _ = stopped.await;
        };
        serve(
            listener,
            Router::new(),
            &limits,
            metrics,
            Options::default(),
            stopped,
        )
        .await
    });
    let mut silent = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(3), server)
        .await
        .expect("the node waited for a connection that said nothing")
        .unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(1), silent.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "still open: {read:?}"
    );
}

/// Once answered, an event stream is written on the runtime the node names (the viewers',
/// below the vote path's priority), not on the connection's.
#[tokio::test]
async fn an_event_stream_is_written_on_the_runtime_the_node_names() {
    use axum::body::Body;
    use axum::http::header;
    let viewers = viewers_runtime("viewers-runtime");
    // Each event names the thread that made it.
    let events = || async {
        let event = futures::stream::once(async {
            let thread = std::thread::current().name().unwrap_or("?").to_owned();
            Ok::<_, std::convert::Infallible>(format!("data: {thread}\n\n"))
        });
        let pending = futures::stream::pending();
        let body = Body::from_stream(futures::StreamExt::chain(event, pending));
        ([(header::CONTENT_TYPE, "text/event-stream")], body)
    };
    let router = Router::new().route("/events", axum::routing::get(events));
    let Running {
        addr, stop, server, ..
    } = start(router, on(&viewers)).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    let request = "GET /events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
    let got = exchange(&mut client, request, "\n\n\r\n").await;
    assert!(got.contains("data: viewers-runtime\n"), "{got}");
    // Stopping ends the stream cleanly, and the listener returns only once it has ended.
    stopping_ends_the_stream(stop, server, client).await;
    viewers.shutdown_background();
}

/// An event stream asked for on a kept-alive connection (hyper's) is written on the viewers'
/// runtime too, and the connection ends with it.
#[tokio::test]
async fn an_event_stream_on_a_kept_alive_connection_is_written_on_the_viewers_runtime() {
    use axum::body::Body;
    use axum::http::header;
    let viewers = viewers_runtime("viewers-rt");
    let thread = || std::thread::current().name().unwrap_or("?").to_owned();
    // Two events, each naming the thread that made it (after a wait, so not within the poll
    // that answered), then the end of the stream.
    let events = move || async move {
        let events = futures::stream::unfold(0, move |n| async move {
            (n < 2).then_some(())?;
            tokio::time::sleep(Duration::from_millis(20)).await;
            Some((
                Ok::<_, std::convert::Infallible>(format!("data: {}\n\n", thread())),
                n + 1,
            ))
        });
        (
            [(header::CONTENT_TYPE, "text/event-stream")],
            Body::from_stream(events),
        )
    };
    // One event, then nothing until the node stops.
    let endless = || async {
        let event =
            futures::stream::once(async { Ok::<_, std::convert::Infallible>("data: endless\n\n") });
        let body = Body::from_stream(futures::StreamExt::chain(event, futures::stream::pending()));
        ([(header::CONTENT_TYPE, "text/event-stream")], body)
    };
    let router = Router::new()
        .route("/events", axum::routing::get(events))
        .route("/endless", axum::routing::get(endless))
        .route(
            "/thread",
            axum::routing::get(move || async move { format!("<{}>", thread()) }),
        );
    let Running {
        addr,
        metrics,
        stop,
        server,
    } = start(router, on(&viewers)).await;
    const THREAD: &str = "GET /thread HTTP/1.1\r\nHost: x\r\n\r\n";
    // A request, then an event stream, on one connection.
    let mut client = TcpStream::connect(addr).await.unwrap();
    let first = exchange(&mut client, THREAD, ">").await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(
        !first.contains("viewers-rt"),
        "moved before any stream: {first}"
    );
    let sse = "GET /events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
    let stream = exchange(&mut client, sse, "\r\n0\r\n\r\n").await;
    assert_eq!(stream.matches("data: viewers-rt\n").count(), 2, "{stream}");
    assert!(stream.contains("connection: close\r\n"), "{stream}");
    assert_eq!(
        metrics.event_streams_through_hyper.load(Ordering::Relaxed),
        1
    );
    assert_eq!(metrics.event_streams.load(Ordering::Relaxed), 0);
    // The connection ends with its stream: it carries no votes on the viewers' runtime.
    let mut rest = String::new();
    let end = client.read_to_string(&mut rest);
    let end = tokio::time::timeout(Duration::from_secs(5), end).await;
    assert!(matches!(end, Ok(Ok(0))), "not closed: {end:?} {rest:?}");
    // Stopping ends a stream that would not end, cleanly and at once (not after the grace).
    let mut client = TcpStream::connect(addr).await.unwrap();
    exchange(&mut client, THREAD, ">").await;
    let sse = "GET /endless HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
    exchange(&mut client, sse, "data: endless\n\n").await;
    stopping_ends_the_stream(stop, server, client).await;
    viewers.shutdown_background();
}

/// A handler's own writer of its stream ([`StreamWriter`]) is handed the socket once the head is
/// written, on the viewers' runtime, whether the stream opened its connection (sniffed) or came
/// after a request (hyper's), and its body is not written; where the listener does not take the
/// socket (HTTP/1.0, which has no chunks) the body is the stream, and a `HEAD` gets the head
/// alone. The writer is told when the node stops.
#[tokio::test]
async fn a_streams_own_writer_is_handed_the_socket_after_the_head() {
    let viewers = viewers_runtime("writers-rt");
    let router = Router::new()
        .route("/own", axum::routing::get(own_stream))
        .route("/plain", axum::routing::get(|| async { "<plain>" }));
    let Running {
        addr, stop, server, ..
    } = start(router, on(&viewers)).await;
    const SSE: &str = "GET /own HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
    let mut sniffed = TcpStream::connect(addr).await.unwrap();
    let got = exchange(&mut sniffed, SSE, "\n\n\r\n").await;
    assert!(got.contains("transfer-encoding: chunked\r\n"), "{got}");
    assert!(
        got.ends_with("\r\n\r\n12\r\ndata: writers-rt\n\n\r\n"),
        "{got}"
    );
    let mut kept = TcpStream::connect(addr).await.unwrap();
    exchange(&mut kept, "GET /plain HTTP/1.1\r\nHost: x\r\n\r\n", ">").await;
    let got = exchange(&mut kept, SSE, "\n\n\r\n").await;
    assert!(
        got.ends_with("\r\n\r\n12\r\ndata: writers-rt\n\n\r\n"),
        "{got}"
    );
    let mut old = TcpStream::connect(addr).await.unwrap();
    let request = "GET /own HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n";
    let mut got = String::new();
    old.write_all(request.as_bytes()).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), old.read_to_string(&mut got));
    assert!(matches!(end.await, Ok(Ok(_))), "not closed: {got:?}");
    assert!(got.ends_with("\r\n\r\ndata: body\n\n"), "{got}");
    // A HEAD: the head alone, by hyper; the writer is not called.
    let mut head = TcpStream::connect(addr).await.unwrap();
    let request = "HEAD /own HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
    let mut got = String::new();
    head.write_all(request.as_bytes()).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), head.read_to_string(&mut got));
    assert!(matches!(end.await, Ok(Ok(_))), "not closed: {got:?}");
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.ends_with("\r\n\r\n") && !got.contains("data"), "{got}");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the listener waited for the writers")
        .unwrap();
    for mut client in [sniffed, kept] {
        let mut rest = String::new();
        let end = tokio::time::timeout(Duration::from_secs(1), client.read_to_string(&mut rest));
        assert!(matches!(end.await, Ok(Ok(_))), "not closed: {rest:?}");
        assert_eq!(rest, "0\r\n\r\n");
    }
    viewers.shutdown_background();
}

/// Without a runtime named for viewers, the writer runs in the connection's own task, and is told
/// when the node stops.
#[tokio::test]
async fn a_streams_own_writer_runs_in_the_connections_task_without_a_viewers_runtime() {
    let router = Router::new().route("/own", axum::routing::get(own_stream));
    let Running {
        addr, stop, server, ..
    } = start(router, Options::default()).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    let sse = "GET /own HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
    let got = exchange(&mut client, sse, "\n\n\r\n").await;
    assert!(
        got.contains("\r\n\r\n") && !got.contains("data: body"),
        "{got}"
    );
    assert!(
        got.ends_with("\n\n\r\n") && got.contains("\r\ndata: "),
        "{got}"
    );
    stopping_ends_the_stream(stop, server, client).await;
}

/// An event stream with its own writer ([`StreamWriter`]): the writer's one chunk names its
/// thread, and it writes the last chunk once the node stops; the body (one event, `data: body`)
/// is for where the socket is not handed over.
async fn own_stream() -> axum::response::Response {
    use axum::body::Body;
    use axum::http::header;
    use axum::response::IntoResponse;
    let writer = StreamWriter::new(|conn: LiveConnection, mut stopping| async move {
        let thread = std::thread::current().name().unwrap_or("?").to_owned();
        let event = format!("data: {thread}\n\n");
        write_fully(
            &conn,
            format!("{:x}\r\n{event}\r\n", event.len()).as_bytes(),
        )
        .await;
        drop(stopping.wait_for(|stop| *stop).await);
        write_fully(&conn, b"0\r\n\r\n").await;
    });
    let body = futures::stream::once(async { Ok::<_, std::convert::Infallible>("data: body\n\n") });
    let mut response = (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(body),
    )
        .into_response();
    response.extensions_mut().insert(writer);
    response
}

/// Writes all of `bytes` on a live connection.
async fn write_fully(conn: &LiveConnection, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        conn.writable().await.unwrap();
        match conn.stream().try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
    }
}

/// hyper writes an event stream's head (after all it held: here a pipelined response of 16 MiB
/// the client is late to read), then hands the socket back and its connection (its buffers, its
/// service) is dropped while the stream goes on; a handler's length header is not the stream's;
/// HTTP/1.0 gets the stream framed by the connection's end, and a `HEAD` the head alone.
#[tokio::test]
async fn an_event_stream_through_hyper_leaves_hyper_after_its_head() {
    use axum::body::Body;
    use axum::http::header;
    // Two events, the second once the test has looked at the first; the stream's socket's
    // shared state, for the test to count who holds it.
    let (next, mut go) = tokio::sync::watch::channel(false);
    let socket = Arc::new(parking_lot::Mutex::new(None));
    let seen = socket.clone();
    let events = move |axum::Extension(context): axum::Extension<ConnectionContext>| async move {
        *seen.lock() = Some(context.live);
        let first =
            futures::stream::once(async { Ok::<_, std::convert::Infallible>("data: 1\n\n") });
        let second = futures::stream::once(async move {
            drop(go.wait_for(|go| *go).await);
            Ok("data: 2\n\n")
        });
        let body = Body::from_stream(futures::StreamExt::chain(first, second));
        let headers = [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CONTENT_LENGTH, "5"),
        ];
        (headers, body)
    };
    // Far more than the socket's buffers hold (the client's is kept small): hyper still holds
    // some of it when it answers the stream.
    const BIG: usize = 16 << 20;
    let big = || async { format!("<{}>", "p".repeat(BIG)) };
    let router = Router::new()
        .route("/events", axum::routing::get(events))
        .route("/big", axum::routing::get(big));
    let Running {
        addr,
        metrics,
        stop,
        server,
    } = start(router, Options::default()).await;
    let client = tokio::net::TcpSocket::new_v4().unwrap();
    client.set_recv_buffer_size(64 << 10).unwrap();
    let mut client = client.connect(addr).await.unwrap();
    // Pipelined: a big response and the stream, asked for in one write, read late.
    let requests = "GET /big HTTP/1.1\r\nHost: x\r\n\r\n\
        GET /events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
    client.write_all(requests.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = exchange(&mut client, "", "data: 1\n\n\r\n").await;
    let (big, stream) = got.split_once('>').expect("the big answer first");
    assert!(big.starts_with("HTTP/1.1 200 OK\r\n"), "{}", &got[..200]);
    assert!(big.ends_with(&format!("\r\n\r\n<{}", "p".repeat(BIG))));
    assert!(stream.starts_with("HTTP/1.1 200 OK\r\n"), "{stream}");
    let (head, body) = stream.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    assert_eq!(body, "9\r\ndata: 1\n\n\r\n");
    // The test's and the socket's: hyper's connection (its service's copy) is gone.
    let live = socket.lock().take().expect("the handler's socket");
    assert_eq!(
        live.holders(),
        2,
        "hyper's connection is still held while the stream goes on"
    );
    next.send_replace(true);
    let mut rest = String::new();
    let end = tokio::time::timeout(Duration::from_secs(5), client.read_to_string(&mut rest));
    assert!(matches!(end.await, Ok(Ok(_))), "not closed: {rest:?}");
    assert_eq!(rest, "9\r\ndata: 2\n\n\r\n0\r\n\r\n");
    assert_eq!(
        metrics.event_streams_through_hyper.load(Ordering::Relaxed),
        1
    );
    // HTTP/1.0 (never sniffed): no chunks, the body ends with the connection.
    next.send_replace(false);
    let mut client = TcpStream::connect(addr).await.unwrap();
    let request = "GET /events HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n";
    let got = exchange(&mut client, request, "data: 1\n\n").await;
    assert!(got.starts_with("HTTP/1.0 200 OK\r\n"), "{got}");
    assert!(!got.contains("transfer-encoding"), "{got}");
    assert!(got.ends_with("\r\n\r\ndata: 1\n\n"), "{got}");
    next.send_replace(true);
    let mut rest = String::new();
    let end = tokio::time::timeout(Duration::from_secs(5), client.read_to_string(&mut rest));
    assert!(matches!(end.await, Ok(Ok(_))), "not closed: {rest:?}");
    assert_eq!(rest, "data: 2\n\n");
    // HEAD: the head alone, by hyper.
    let mut client = TcpStream::connect(addr).await.unwrap();
    let request = "HEAD /events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
    client.write_all(request.as_bytes()).await.unwrap();
    let mut got = String::new();
    let end = tokio::time::timeout(Duration::from_secs(5), client.read_to_string(&mut got));
    assert!(matches!(end.await, Ok(Ok(_))), "not closed: {got:?}");
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.ends_with("\r\n\r\n") && !got.contains("data"), "{got}");
    assert_eq!(
        metrics.event_streams_through_hyper.load(Ordering::Relaxed),
        3
    );
    stop.send(()).unwrap();
    server.await.unwrap();
}

/// A stream handed to the viewers' runtime needs nothing more of the runtime that accepted it:
/// its socket is registered with the viewers' runtime, so it goes on (past a full socket, which
/// waits for the driver to say it takes writes again) while the other does not run. Both ways: a
/// stream asked for first on its connection (sniffed), and one behind another request (hyper's).
#[test]
fn a_handed_off_stream_outlives_the_runtime_that_accepted_it() {
    stream_outlives_the_runtime_that_accepted_it("");
    stream_outlives_the_runtime_that_accepted_it("GET /plain HTTP/1.1\r\nHost: x\r\n\r\n");
}

fn stream_outlives_the_runtime_that_accepted_it(before: &str) {
    use axum::body::Body;
    // Far more than the socket's buffers hold (the client's is kept small): the writes wait.
    const SECOND: usize = 16 << 20;
    use axum::http::header;
    use std::io::Write;
    let viewers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let accepting = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (next, mut go) = tokio::sync::watch::channel(false);
    let events = move || async move {
        let first =
            futures::stream::once(async { Ok::<_, std::convert::Infallible>("data: 1\n\n") });
        let second = futures::stream::once(async move {
            drop(go.wait_for(|go| *go).await);
            Ok(format!("data: {}\n\n", "2".repeat(SECOND)))
        });
        let first = futures::StreamExt::map(first, |e| e.map(String::from));
        let body = Body::from_stream(futures::StreamExt::chain(first, second));
        ([(header::CONTENT_TYPE, "text/event-stream")], body)
    };
    let router = Router::new()
        .route("/events", axum::routing::get(events))
        .route("/plain", axum::routing::get(|| async { "<plain>" }));
    let options = Options {
        event_streams: Some(viewers.handle().clone()),
        ..Options::default()
    };
    let (addr, served) = serve_on(&accepting, router, options);
    let mut client = std::net::TcpStream::connect(addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    socket2::SockRef::from(&client)
        .set_recv_buffer_size(64 << 10)
        .unwrap();
    let request = "GET /events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
    client
        .write_all(format!("{before}{request}").as_bytes())
        .unwrap();
    // The runtime that accepted runs only while it is asked to.
    accepting.block_on(async {
        let mut waited = 0;
        while viewers.metrics().num_alive_tasks() == 0 && waited < 500 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += 1;
        }
    });
    let first = read_until(&mut client, "data: 1\n\n");
    assert_eq!(first.contains("<plain>"), !before.is_empty(), "{first}");
    // Behind another request, the stream was answered through hyper and handed back.
    let through_hyper = served.event_streams_through_hyper.load(Ordering::Relaxed);
    assert_eq!(through_hyper, u64::from(!before.is_empty()));
    // The accepting runtime is not run again: its driver reports nothing from now on.
    next.send_replace(true);
    std::thread::sleep(Duration::from_millis(300));
    let rest = read_until(&mut client, "\r\n0\r\n\r\n");
    assert_eq!(rest.matches('2').count(), SECOND);
    drop(accepting);
}

/// An upgraded socket moved to the viewers' runtime ([`LiveConnection::move_to`]) is read and
/// written there with nothing of the runtime that accepted it, which runs here only until the
/// socket has moved and is then dropped; what the client sent before the move is read there.
#[test]
fn an_upgraded_socket_moved_to_the_viewers_runtime_needs_nothing_of_the_accepting_one() {
    use axum::body::Body;
    use axum::http::{header, Request, StatusCode};
    use std::io::Write;
    let viewers = viewers_runtime("viewers-ws");
    let accepting = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (is_upgraded, mut upgraded_yet) = tokio::sync::watch::channel(false);
    let (release, mut released) = tokio::sync::watch::channel(false);
    let (moved, mut moved_yet) = tokio::sync::watch::channel(false);
    let there = viewers.handle().clone();
    // Upgrades, moves the socket once released, then answers each byte the client sends with
    // the thread that read it.
    let upgrade = move |mut request: Request<Body>| async move {
        let on_upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let (conn, _) = LiveConnection::take(upgraded).expect("a socket of the listener's");
            is_upgraded.send_replace(true);
            drop(released.wait_for(|go| *go).await);
            let conn = conn.move_to(&there).unwrap();
            there.spawn(async move {
                let mut byte = [0u8; 1];
                while conn.readable().await.is_ok() {
                    match conn.stream().try_read(&mut byte) {
                        Ok(1) => {
                            let thread = std::thread::current().name().unwrap_or("?").to_owned();
                            let answer = format!("<{}:{thread}>", byte[0] as char);
                            // A new registration knows the socket writable only once told.
                            conn.writable().await.unwrap();
                            let written = conn.stream().try_write(answer.as_bytes());
                            assert_eq!(written.unwrap(), answer.len());
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        _ => return,
                    }
                }
            });
            moved.send_replace(true);
        });
        let switching = [
            (header::CONNECTION, "upgrade"),
            (header::UPGRADE, "websocket"),
        ];
        (StatusCode::SWITCHING_PROTOCOLS, switching)
    };
    let router = Router::new().route("/ws", axum::routing::get(upgrade));
    let (addr, _) = serve_on(&accepting, router, Options::default());
    let mut client = std::net::TcpStream::connect(addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let request =
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
    client.write_all(request.as_bytes()).unwrap();
    // The accepting runtime runs until the connection is upgraded, and again until the socket
    // has moved, with a byte from the client waiting on it.
    let until = |seen: &mut tokio::sync::watch::Receiver<bool>| {
        accepting.block_on(async {
            let wait = seen.wait_for(|seen| *seen);
            tokio::time::timeout(Duration::from_secs(5), wait)
                .await
                .expect("not in time")
                .unwrap();
        })
    };
    until(&mut upgraded_yet);
    let head = read_until(&mut client, "\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    client.write_all(b"a").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    release.send_replace(true);
    until(&mut moved_yet);
    drop(accepting);
    assert_eq!(read_until(&mut client, ">"), "<a:viewers-ws>");
    client.write_all(b"b").unwrap();
    assert_eq!(read_until(&mut client, ">"), "<b:viewers-ws>");
}

/// Serves `router` with `options` on a loopback port, in a task of `accepting` (which runs it only
/// while asked to); its address and counters.
fn serve_on(
    accepting: &tokio::runtime::Runtime,
    router: Router,
    options: Options,
) -> (std::net::SocketAddr, Arc<HttpMetrics>) {
    let listener = accepting
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Arc::new(HttpMetrics::default());
    let served = metrics.clone();
    accepting.spawn(async move {
        let limits = HttpLimits::default();
        let forever = std::future::pending();
        serve(listener, router, &limits, metrics, options, forever).await
    });
    (addr, served)
}

/// Reads `client` (a blocking socket) until what came contains `until`; panics if it ends or
/// its read timeout passes first.
fn read_until(client: &mut std::net::TcpStream, until: &str) -> String {
    use std::io::Read;
    let (mut got, mut buf) = (Vec::new(), vec![0u8; 64 << 10]);
    loop {
        let from = got.len().saturating_sub(until.len());
        match client.read(&mut buf) {
            Ok(n @ 1..) => got.extend_from_slice(&buf[..n]),
            ended => panic!("{ended:?} before {until:?}: {} bytes", got.len()),
        }
        if got[from..]
            .windows(until.len())
            .any(|w| w == until.as_bytes())
        {
            return String::from_utf8(got).unwrap();
        }
    }
}

/// A listener on a loopback port, serving in a task of its own.
pub(super) struct Running {
    pub(super) addr: std::net::SocketAddr,
    pub(super) metrics: Arc<HttpMetrics>,
    /// Stops it (dropped, too).
    pub(super) stop: tokio::sync::oneshot::Sender<()>,
    pub(super) server: tokio::task::JoinHandle<()>,
}

/// A runtime of one thread named `name`, for viewers.
fn viewers_runtime(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}

/// The listener's options with event streams written on `viewers`.
fn on(viewers: &tokio::runtime::Runtime) -> Options {
    Options {
        event_streams: Some(viewers.handle().clone()),
        ..Options::default()
    }
}

/// Starts the listener on `router` with `options`.
async fn start(router: Router, options: Options) -> Running {
    start_within(router, options, HttpLimits::default()).await
}

/// Starts the listener on `router` with `options`, within `limits`.
pub(super) async fn start_within(router: Router, options: Options, limits: HttpLimits) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Arc::new(HttpMetrics::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn({
        let metrics = metrics.clone();
        async move {
            let stopped = async { drop(stopped.await) };
            serve(listener, router, &limits, metrics, options, stopped).await
        }
    });
    Running {
        addr,
        metrics,
        stop,
        server,
    }
}

/// Stops the listener (`server`): it returns within 5 s (not after the grace period), and
/// `client`'s stream has ended with its last chunk and the connection closed.
async fn stopping_ends_the_stream(
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
    mut client: TcpStream,
) {
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the listener waited for the stream")
        .unwrap();
    let mut rest = String::new();
    let end = client.read_to_string(&mut rest);
    tokio::time::timeout(Duration::from_secs(1), end)
        .await
        .expect("the connection was not closed")
        .unwrap();
    assert!(rest.ends_with("0\r\n\r\n"), "{rest:?}");
}

/// Writes `request` on `client` and reads until what came contains `until`.
async fn exchange(client: &mut TcpStream, request: &str, until: &str) -> String {
    client.write_all(request.as_bytes()).await.unwrap();
    let (mut got, mut buf) = (Vec::new(), vec![0u8; 64 << 10]);
    loop {
        let from = got.len().saturating_sub(until.len());
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("no answer")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        if got[from..]
            .windows(until.len())
            .any(|w| w == until.as_bytes())
        {
            return String::from_utf8(got).unwrap();
        }
    }
}

#[test]
fn the_gate_caps_connections_in_all_and_per_address_and_frees_them_on_drop() {
    let gate = Gate::new(3, 2, true, Default::default());
    let a: IpAddr = "10.0.0.1".parse().unwrap();
    let b: IpAddr = "10.0.0.2".parse().unwrap();
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    let a1 = gate.admit(a).unwrap();
    let _a2 = gate.admit(a).unwrap();
    assert_eq!(gate.admit(a).unwrap_err(), Refusal::AddressCap);
    let _b1 = gate.admit(b).unwrap();
    assert_eq!(gate.open(), 3);
    assert_eq!(gate.admit(b).unwrap_err(), Refusal::TotalCap);
    assert_eq!(gate.admit(loopback).unwrap_err(), Refusal::TotalCap);
    drop(a1);
    assert_eq!(gate.open(), 2);
    // Loopback is exempt from the per-address cap, not from the total.
    let _l1 = gate.admit(loopback).unwrap();
    assert_eq!(gate.admit(loopback).unwrap_err(), Refusal::TotalCap);
    assert_eq!(gate.open.lock().get(&a), Some(&1));
}

#[test]
fn the_default_cap_leaves_a_reserve_below_the_open_file_limit() {
    assert_eq!(
        connection_cap(0, 20_000),
        20_000 - DESCRIPTOR_RESERVE as usize
    );
    assert_eq!(connection_cap(0, 256), 64);
    assert_eq!(connection_cap(100, 20_000), 100);
}

/// A crowd connecting at once waits in the kernel's backlog for the accept loop, not a second
/// for a dropped handshake to be tried again: 600 connections to a listener that has accepted
/// none of them all complete their handshakes (with tokio's own backlog of 128 the 130th waits).
#[tokio::test]
async fn a_crowd_connecting_at_once_fits_in_the_listen_backlog() {
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096);
    let crowd = 600;
    if somaxconn < crowd {
        eprintln!(
            "SKIPPED: net.core.somaxconn is {somaxconn}, so the kernel holds any backlog below \
             the crowd of {crowd}; nothing here to test"
        );
        return;
    }
    let listener = bind("127.0.0.1:0", HttpLimits::default().listen_backlog)
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let connects = (0..crowd)
        .map(|_| tokio::time::timeout(Duration::from_millis(800), TcpStream::connect(addr)));
    let results = futures::future::join_all(connects).await;
    let connected: Vec<TcpStream> = results.into_iter().flatten().flatten().collect();
    assert_eq!(
        connected.len(),
        crowd,
        "only {} of {crowd} handshakes completed without the accept loop",
        connected.len()
    );
    drop(listener);
}

#[tokio::test]
async fn binding_an_address_in_use_fails_with_the_kernels_reason() {
    let first = bind("127.0.0.1:0", 16).await.unwrap();
    let taken = first.local_addr().unwrap().to_string();
    let err = bind(&taken, 16).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
}

#[test]
fn a_listen_backlog_of_zero_is_refused() {
    let limits = HttpLimits {
        listen_backlog: 0,
        ..HttpLimits::default()
    };
    assert!(limits.check().unwrap_err().contains("http.listen_backlog"));
    assert!(HttpLimits::default().check().is_ok());
}
