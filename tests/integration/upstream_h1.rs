//! The proxy's own HTTP/1.1 client against backends that send hostile or unusual bytes: heads
//! it must refuse (502), bodies whose framing breaks (the client sees the body cut, never a
//! complete one), and connections it may or may not use again (counted at the backend).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(10);

/// What the backend answers to one request head: the bytes, and whether it closes after them.
type Script = dyn Fn(&str) -> (Vec<u8>, bool) + Send + Sync;

/// A backend that reads requests (head, then a body framed by length or chunks) and answers each
/// with what its script says, counting the connections it accepted.
struct ScriptedBackend {
    address: SocketAddr,
    connections: Arc<AtomicUsize>,
    heads: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedBackend {
    async fn start(script: impl Fn(&str) -> (Vec<u8>, bool) + Send + Sync + 'static) -> Self {
        let script: Arc<Script> = Arc::new(script);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (count, seen) = (Arc::clone(&connections), Arc::clone(&heads));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, Arc::clone(&script), Arc::clone(&seen)));
            }
        });
        ScriptedBackend {
            address,
            connections,
            heads,
            task,
        }
    }

    /// Always the same answer; `close`: the connection ends after it.
    async fn answering(answer: &'static [u8], close: bool) -> Self {
        Self::start(move |_| (answer.to_vec(), close)).await
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for ScriptedBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut stream: TcpStream,
    script: Arc<Script>,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
) {
    let mut buf = Vec::new();
    loop {
        let Some(head) = read_until(&mut stream, &mut buf, b"\r\n\r\n").await else {
            return;
        };
        let head = String::from_utf8_lossy(&head).into_owned();
        let lower = head.to_ascii_lowercase();
        if let Some(length) = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            while buf.len() < length {
                if !read_more(&mut stream, &mut buf).await {
                    return;
                }
            }
            buf.drain(..length);
        } else if lower.contains("transfer-encoding: chunked") {
            let Some(_) = read_until(&mut stream, &mut buf, b"0\r\n\r\n").await else {
                return;
            };
        }
        seen.lock().unwrap().push(head.clone());
        let (answer, close) = script(&head);
        if stream.write_all(&answer).await.is_err() {
            return;
        }
        if close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// Takes bytes up to and including `end` off the front of `buf`, reading more as needed.
async fn read_until(stream: &mut TcpStream, buf: &mut Vec<u8>, end: &[u8]) -> Option<Vec<u8>> {
    loop {
        if let Some(at) = buf.windows(end.len()).position(|w| w == end) {
            return Some(buf.drain(..at + end.len()).collect());
        }
        if !read_more(stream, buf).await {
            return None;
        }
    }
}

async fn proxy_for(backend: &ScriptedBackend) -> TestProxy {
    let config = config_for_addresses(&[("blue", &[backend.address])], "\"blue\"", "");
    TestProxy::start(&config).await
}

/// One request on a new client connection; the response as far as it came: complete, or cut
/// where the proxy closed the connection.
async fn exchange(proxy: &TestProxy, request: &str) -> String {
    let mut stream = TcpStream::connect(proxy.address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let read = async {
        while !complete(&buf, request.starts_with("HEAD")) {
            if !read_more(&mut stream, &mut buf).await {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("an answer in time");
    String::from_utf8_lossy(&buf).into_owned()
}

const GET: &str = "GET / HTTP/1.1\r\nhost: x\r\n\r\n";

fn complete(buf: &[u8], head_only: bool) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some(end) = text.find("\r\n\r\n") else {
        return false;
    };
    let (head, body) = (&text[..end], &text[end + 4..]);
    if head_only || [" 204 ", " 304 "].iter().any(|s| head.contains(s)) {
        return true;
    }
    match header(head, "content-length") {
        Some(length) => body.len() >= length.parse::<usize>().unwrap(),
        None => body.ends_with("0\r\n\r\n"),
    }
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_string())
    })
}

fn status(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn body(response: &str) -> &str {
    response
        .find("\r\n\r\n")
        .map_or("", |end| &response[end + 4..])
}

/// The body broke: the client never sees its proper end (nor, when it broke at once, the head).
fn assert_cut(response: &str) {
    assert!([0, 200].contains(&status(response)), "{response}");
    assert!(!complete(response.as_bytes(), false), "{response}");
}

#[tokio::test]
async fn malformed_heads_are_502() {
    let mut many = String::from("HTTP/1.1 200 OK\r\n");
    for i in 0..101 {
        many.push_str(&format!("x-{i}: v\r\n"));
    }
    many.push_str("content-length: 0\r\n\r\n");
    let mut huge = String::from("HTTP/1.1 200 OK\r\nx-big: ");
    huge.push_str(&"a".repeat(70 * 1024));
    huge.push_str("\r\ncontent-length: 0\r\n\r\n");
    let answers: Vec<Vec<u8>> = vec![
        b"HTTP/1.1 2x0 OK\r\ncontent-length: 0\r\n\r\n".to_vec(),
        b"garbage\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok".to_vec(),
        b"HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\nok".to_vec(),
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec(),
        many.into_bytes(),
        huge.into_bytes(),
    ];
    for answer in answers {
        let shown = String::from_utf8_lossy(&answer[..answer.len().min(60)]).into_owned();
        let backend = ScriptedBackend::start(move |_| (answer.clone(), true)).await;
        let proxy = proxy_for(&backend).await;
        let response = exchange(&proxy, GET).await;
        assert_eq!(status(&response), 502, "{shown}: {response}");
    }
}

#[tokio::test]
async fn a_head_that_never_ends_is_502() {
    let backend = ScriptedBackend::answering(b"HTTP/1.1 200 OK\r\nx: y\r\n", true).await;
    let proxy = proxy_for(&backend).await;
    assert_eq!(status(&exchange(&proxy, GET).await), 502);
}

#[tokio::test]
async fn broken_chunk_framing_cuts_the_body() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffffff\r\nx\r\n0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\nhello",
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello",
    ] {
        let backend = ScriptedBackend::answering(answer, true).await;
        let proxy = proxy_for(&backend).await;
        assert_cut(&exchange(&proxy, GET).await);
    }
}

#[tokio::test]
async fn extensions_and_trailers_pass_as_plain_chunks_and_keep_the_connection() {
    let backend = ScriptedBackend::answering(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
          5;name=\"v\"\r\nhello\r\n6 ; x\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n",
        false,
    )
    .await;
    let proxy = proxy_for(&backend).await;
    for _ in 0..2 {
        let response = exchange(&proxy, GET).await;
        assert_eq!(status(&response), 200, "{response}");
        let text = body(&response).replace("\r\n", "|");
        assert!(text.ends_with("|0||"), "{response}");
        assert!(
            !text.contains("name") && !text.contains("x-trailer"),
            "{text}"
        );
    }
    assert_eq!(backend.connections(), 1);
}

#[tokio::test]
async fn a_body_until_close_is_passed_whole_on_a_connection_not_reused() {
    let backend = ScriptedBackend::answering(b"HTTP/1.1 200 OK\r\n\r\nhello world", true).await;
    let proxy = proxy_for(&backend).await;
    for _ in 0..2 {
        let response = exchange(&proxy, GET).await;
        assert_eq!(status(&response), 200, "{response}");
        assert_eq!(
            body(&response).to_ascii_lowercase(),
            "b\r\nhello world\r\n0\r\n\r\n"
        );
    }
    assert_eq!(backend.connections(), 2);
}

#[tokio::test]
async fn interim_answers_are_skipped() {
    let backend = ScriptedBackend::answering(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
          HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        false,
    )
    .await;
    let proxy = proxy_for(&backend).await;
    for _ in 0..2 {
        let response = exchange(&proxy, GET).await;
        assert_eq!(status(&response), 200, "{response}");
        assert_eq!(body(&response), "ok");
        assert_eq!(header(&response, "link"), None);
    }
    assert_eq!(backend.connections(), 1);
}

#[tokio::test]
async fn answers_without_a_body_keep_the_connection() {
    let backend = ScriptedBackend::start(|head| {
        let answer: &[u8] = if head.starts_with("HEAD") {
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"
        } else if head.starts_with("GET /304") {
            b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n"
        } else {
            b"HTTP/1.1 204 No Content\r\n\r\n"
        };
        (answer.to_vec(), false)
    })
    .await;
    let proxy = proxy_for(&backend).await;
    let response = exchange(&proxy, "HEAD / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(status(&response), 200, "{response}");
    assert_eq!(body(&response), "");
    let response = exchange(&proxy, "GET /304 HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(status(&response), 304, "{response}");
    let response = exchange(&proxy, GET).await;
    assert_eq!(status(&response), 204, "{response}");
    assert_eq!(body(&response), "");
    assert_eq!(backend.connections(), 1);
}

#[tokio::test]
async fn connection_close_and_double_framing_are_not_reused() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 9\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ] {
        // The backend leaves the connection open: only the proxy's reading of the head closes it.
        let backend = ScriptedBackend::answering(answer, false).await;
        let proxy = proxy_for(&backend).await;
        for _ in 0..2 {
            let response = exchange(&proxy, GET).await;
            assert_eq!(status(&response), 200, "{response}");
        }
        assert_eq!(backend.connections(), 2, "{}", String::from_utf8_lossy(answer));
    }
}

#[tokio::test]
async fn request_bodies_keep_their_length_or_go_chunked() {
    let backend =
        ScriptedBackend::answering(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false).await;
    let proxy = proxy_for(&backend).await;
    let sized = "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello";
    assert_eq!(status(&exchange(&proxy, sized).await), 200);
    let chunked =
        "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    assert_eq!(status(&exchange(&proxy, chunked).await), 200);
    let heads = backend.heads();
    assert!(heads[0].contains("content-length: 5\r\n"), "{}", heads[0]);
    assert!(!heads[0].contains("transfer-encoding"), "{}", heads[0]);
    assert!(
        heads[1].contains("transfer-encoding: chunked\r\n"),
        "{}",
        heads[1]
    );
    assert!(!heads[1].contains("content-length"), "{}", heads[1]);
    assert_eq!(backend.connections(), 1);
}

#[tokio::test]
async fn a_parked_connection_the_backend_closed_is_not_used() {
    let backend =
        ScriptedBackend::answering(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", true).await;
    let proxy = proxy_for(&backend).await;
    for _ in 0..3 {
        let response = exchange(&proxy, GET).await;
        assert_eq!(status(&response), 200, "{response}");
    }
    assert_eq!(backend.connections(), 3);
}

/// The second request on a connection finds the backend closing it without an answer: a `GET`
/// goes again on a new connection, a `POST` (which the backend may have acted on) gets `502`.
#[tokio::test]
async fn a_get_the_backend_dropped_on_a_reused_connection_goes_again() {
    for (request, expected, connections) in [
        (GET, 200, 2),
        (
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi",
            502,
            1,
        ),
    ] {
        let served = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&served);
        let backend = ScriptedBackend::start(move |_| {
            if count.fetch_add(1, Ordering::SeqCst) == 1 {
                (Vec::new(), true)
            } else {
                (
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
                    false,
                )
            }
        })
        .await;
        let proxy = proxy_for(&backend).await;
        assert_eq!(status(&exchange(&proxy, GET).await), 200);
        let response = exchange(&proxy, request).await;
        assert_eq!(status(&response), expected, "{request}: {response}");
        assert_eq!(backend.connections(), connections, "{request}");
    }
}

/// A backend that answers an upload as soon as it has the head: the answer's first chunk reaches
/// the client at once, and the rest of the upload, which the client sends only after seeing it,
/// still reaches the backend (sent on by the response body, the request having been answered).
#[tokio::test]
async fn an_upload_answered_early_still_reaches_the_backend_whole() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let backend = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        read_until(&mut stream, &mut buf, b"\r\n\r\n")
            .await
            .unwrap();
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nearly\r\n")
            .await
            .unwrap();
        while buf.len() < 11 {
            if !read_more(&mut stream, &mut buf).await {
                break;
            }
        }
        let received = String::from_utf8_lossy(&buf).into_owned();
        let last = format!("{:x}\r\n{received}\r\n0\r\n\r\n", received.len());
        stream.write_all(last.as_bytes()).await.unwrap();
    });
    let config = config_for_addresses(&[("blue", &[address])], "\"blue\"", "");
    let proxy = TestProxy::start(&config).await;
    let mut client = TcpStream::connect(proxy.address).await.unwrap();
    client
        .write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\n\r\nhello")
        .await
        .unwrap();
    let mut response = Vec::new();
    let first = read_until(&mut client, &mut response, b"early\r\n");
    tokio::time::timeout(WAIT, first)
        .await
        .expect("the early answer in time")
        .expect("the early answer");
    client.write_all(b" world").await.unwrap();
    let rest = read_until(&mut client, &mut response, b"0\r\n\r\n");
    let rest = tokio::time::timeout(WAIT, rest)
        .await
        .expect("the end of the answer in time")
        .expect("the end of the answer");
    let rest = String::from_utf8_lossy(&rest).into_owned();
    assert!(rest.contains("hello world"), "{rest}");
    backend.await.unwrap();
}
