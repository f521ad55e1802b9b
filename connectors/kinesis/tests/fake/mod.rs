//! A scripted Kinesis on 127.0.0.1 for what kinesalite cannot do (throttling, expired
//! iterators, refused records): a thread answering each JSON request with the next answer of
//! a script, recording the requests.
//!
//! Shared by the sink's tests (`#[path]`).

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request: the operation (`GetRecords`) and its JSON body.
pub type Request = (String, serde_json::Value);

/// A scripted service, stopped when dropped (the listener thread ends with the process).
pub struct Fake {
    port: u16,
    /// Answers in order: (HTTP status, JSON body).
    script: Arc<Mutex<VecDeque<(u16, serde_json::Value)>>>,
    /// Requests received, in order.
    pub requests: Arc<Mutex<Vec<Request>>>,
}

impl Fake {
    /// Starts a fake answering with `script`, then with 500s once it runs out.
    pub fn start(script: Vec<(u16, serde_json::Value)>) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().expect("an address").port();
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (script.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (s, r) = (s.clone(), r.clone());
                std::thread::spawn(move || serve(stream, &s, &r));
            }
        });
        Fake { port, script, requests }
    }

    /// An SDK configuration pointing at the fake.
    pub fn sdk(&self) -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(format!("http://127.0.0.1:{}", self.port))
            .credentials_provider(aws_sdk_kinesis::config::SharedCredentialsProvider::new(
                aws_sdk_kinesis::config::Credentials::new("test", "test", None, None, "static"),
            ))
            .build()
    }

    /// The requests so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// How many scripted answers are left.
    pub fn left(&self) -> usize {
        self.script.lock().map(|s| s.len()).unwrap_or(0)
    }
}

/// An error answer of the JSON protocol.
pub fn error(code: &str, message: &str) -> (u16, serde_json::Value) {
    (400, serde_json::json!({"__type": code, "message": message}))
}

/// A success answer.
pub fn ok(body: serde_json::Value) -> (u16, serde_json::Value) {
    (200, body)
}

fn serve(stream: TcpStream, script: &Mutex<VecDeque<(u16, serde_json::Value)>>, requests: &Mutex<Vec<Request>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut target = String::new();
        let mut length = 0usize;
        let mut line = String::new();
        // The request line, then headers up to the blank line.
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((name, value)) = l.split_once(':') {
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "x-amz-target" => target = value.trim().rsplit('.').next().unwrap_or_default().to_owned(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        if let Ok(mut r) = requests.lock() {
            r.push((target, json));
        }
        let (status, answer) = script.lock().ok().and_then(|mut s| s.pop_front()).unwrap_or_else(|| {
            (
                500,
                serde_json::json!({"__type": "InternalFailure", "message": "script ran out"}),
            )
        });
        let text = answer.to_string();
        let reason = if status == 200 { "OK" } else { "Error" };
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}
