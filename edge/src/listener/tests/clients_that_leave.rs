//! Clients that leave while their request is in flight. hyper does not read then (`half_close`
//! in `serve`): a client that shut its side is answered, and a client gone is noticed when its
//! answer is written.

use super::*;

/// A client that shuts its side of the connection once it has sent its request (as `nc -N` and
/// some gateways do) gets its answer, and the connection then ends. Were hyper to read while the
/// request is in flight, it would take that end for a client gone and close the connection
/// unanswered.
#[tokio::test]
async fn a_client_that_shuts_its_side_after_its_request_is_answered() {
    let router = Router::new().route(
        "/slow",
        axum::routing::get(|| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            "answered"
        }),
    );
    let running = start(router, Options::default()).await;
    let mut client = TcpStream::connect(running.addr).await.unwrap();
    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    client.shutdown().await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_string(&mut answer))
        .await
        .expect("the connection was not closed after its answer")
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("answered"),
        "{answer:?}"
    );
}

/// A client gone altogether while its request is in flight holds its place until its answer is
/// written, and not after: the connection ends then, and its place at the gate is free.
#[tokio::test]
async fn a_client_gone_mid_request_frees_its_place_once_its_answer_is_written() {
    let (began, mut begun) = tokio::sync::mpsc::unbounded_channel::<()>();
    let release = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let release = release.clone();
        move || {
            let (began, release) = (began.clone(), release.clone());
            async move {
                began.send(()).unwrap();
                release.notified().await;
                "answered"
            }
        }
    };
    let router = Router::new().route("/held", axum::routing::get(handler));
    let running = start(router, Options::default()).await;
    let mut gone = TcpStream::connect(running.addr).await.unwrap();
    gone.write_all(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), begun.recv())
        .await
        .expect("the request never reached its handler");
    drop(gone);
    let open = || running.metrics.connections_open.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        open(),
        1,
        "the connection ended before its answer was written"
    );
    release.notify_one();
    let deadline = Instant::now() + Duration::from_secs(5);
    while open() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        open(),
        0,
        "a client gone before its answer still holds its place"
    );
}
