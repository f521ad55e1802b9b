//! Message ops: reading a command, and deciding its outcome against the message it targets.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sluice_runtime::Value;

/// A command of the `message_ops` input, read and type-checked.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Op {
    /// The caller's request id: the key of its outcome.
    pub request_id: Arc<str>,
    /// The authenticated caller.
    pub user: Arc<str>,
    /// What the caller asks for.
    pub command: Command,
}

/// The four commands of spec/messages.md. Fields that failed their type check are recorded
/// in `problems` rather than refused at reading, because `invalid` is an outcome the caller
/// gets back, not a dead letter.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Command {
    /// Create a message.
    Send {
        /// The receiver.
        to: Arc<str>,
        /// The text (may be empty when there are files).
        text: Arc<str>,
        /// Attached file ids.
        files: Vec<Arc<str>>,
        /// Why the send is invalid, all reasons; empty when it is not.
        problems: Vec<String>,
    },
    /// Change a message's text (sender only).
    Edit {
        /// The target.
        message_id: Arc<str>,
        /// The timestamp the caller last saw.
        if_match: u64,
        /// The new text.
        text: Arc<str>,
        /// Type errors of the fields.
        problems: Vec<String>,
    },
    /// Set a message's read state (receiver only).
    MarkRead {
        /// The target.
        message_id: Arc<str>,
        /// The timestamp the caller last saw.
        if_match: u64,
        /// The new read state.
        read: bool,
        /// Type errors of the fields.
        problems: Vec<String>,
    },
    /// Blank a message (sender or receiver).
    Delete {
        /// The target.
        message_id: Arc<str>,
        /// The timestamp the caller last saw.
        if_match: u64,
        /// Type errors of the fields.
        problems: Vec<String>,
    },
    /// An `op` that is none of the four.
    Unknown {
        /// What the record said, for the reason.
        op: String,
    },
}

/// Why a record is not a message op at all (it goes to the dead letters: without a request id
/// and a user there is nobody to answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// The record is not a JSON object.
    #[error("a message op is a JSON object, not {0}")]
    NotObject(&'static str),
    /// `request_id` or `user` is missing, empty or not a string.
    #[error("`{0}` is missing, empty or not a string")]
    Missing(&'static str),
}

/// The length of a file id (a MongoDB ObjectId in hexadecimal, in the original).
pub const FILE_ID_LEN: usize = 24;

impl Op {
    /// Reads an op; type errors of command fields become the command's `problems`.
    pub fn from_record(record: &Value) -> Result<Op, OpError> {
        if record.as_map().is_none() {
            return Err(OpError::NotObject(record.type_name()));
        }
        let required = |name: &'static str| match record.get(name).and_then(Value::as_str) {
            Some(s) if !s.is_empty() => Ok(Arc::<str>::from(s)),
            _ => Err(OpError::Missing(name)),
        };
        let request_id = required("request_id")?;
        let user = required("user")?;
        let mut problems = Vec::new();
        let command = match record.get("op").and_then(Value::as_str) {
            Some("send") => {
                let to = string_field(record, "to", &mut problems).unwrap_or_default();
                let text = optional_string(record, "text", &mut problems);
                let files = file_ids(record, &mut problems);
                if to.trim().is_empty() {
                    problems.push("`to` is empty".to_owned());
                }
                if text.is_empty() && files.is_empty() {
                    problems.push("the message has neither text nor files".to_owned());
                }
                Command::Send {
                    to,
                    text,
                    files,
                    problems,
                }
            }
            Some("edit") => {
                let message_id = string_field(record, "message_id", &mut problems).unwrap_or_default();
                let if_match = if_match(record, &mut problems);
                let text = string_field(record, "text", &mut problems).unwrap_or_default();
                Command::Edit {
                    message_id,
                    if_match,
                    text,
                    problems,
                }
            }
            Some("mark_read") => {
                let message_id = string_field(record, "message_id", &mut problems).unwrap_or_default();
                let if_match = if_match(record, &mut problems);
                let read = match record.get("read") {
                    Some(Value::Bool(b)) => *b,
                    _ => {
                        problems.push("`read` must be a boolean".to_owned());
                        false
                    }
                };
                Command::MarkRead {
                    message_id,
                    if_match,
                    read,
                    problems,
                }
            }
            Some("delete") => {
                let message_id = string_field(record, "message_id", &mut problems).unwrap_or_default();
                let if_match = if_match(record, &mut problems);
                Command::Delete {
                    message_id,
                    if_match,
                    problems,
                }
            }
            other => Command::Unknown {
                op: other.map_or_else(|| "(none)".to_owned(), str::to_owned),
            },
        };
        Ok(Op {
            request_id,
            user,
            command,
        })
    }

    /// Whether the op names an existing message (edit, mark read, delete).
    pub fn names_target(&self) -> bool {
        matches!(
            self.command,
            Command::Edit { .. } | Command::MarkRead { .. } | Command::Delete { .. }
        )
    }

    /// The message the op targets: the one it creates (a send, whose id comes from its
    /// timestamp) or the one it names.
    pub fn target(&self, timestamp: u64) -> Arc<str> {
        match &self.command {
            Command::Send { .. } | Command::Unknown { .. } => message_id(timestamp),
            Command::Edit { message_id, .. }
            | Command::MarkRead { message_id, .. }
            | Command::Delete { message_id, .. } => Arc::clone(message_id),
        }
    }
}

/// The id of the message a send with this timestamp creates: 24 hexadecimal digits, the form
/// of the original's ids, unique because timestamps are.
pub fn message_id(timestamp: u64) -> Arc<str> {
    Arc::from(format!("{timestamp:024x}"))
}

fn string_field(record: &Value, name: &str, problems: &mut Vec<String>) -> Option<Arc<str>> {
    match record.get(name) {
        Some(Value::Str(s)) => Some(Arc::clone(s)),
        Some(other) => {
            problems.push(format!("`{name}` must be a string, not {}", other.type_name()));
            None
        }
        None => {
            problems.push(format!("`{name}` is missing"));
            None
        }
    }
}

fn optional_string(record: &Value, name: &str, problems: &mut Vec<String>) -> Arc<str> {
    match record.get(name) {
        None | Some(Value::Null) => Arc::from(""),
        Some(_) => string_field(record, name, problems).unwrap_or_default(),
    }
}

fn if_match(record: &Value, problems: &mut Vec<String>) -> u64 {
    let value = record.get("if_match");
    match value.and_then(Value::as_i64).and_then(|n| u64::try_from(n).ok()) {
        Some(n) => n,
        None => match value {
            Some(Value::UInt(n)) => *n,
            _ => {
                problems.push("`if_match` must be a timestamp (a non-negative integer)".to_owned());
                0
            }
        },
    }
}

fn file_ids(record: &Value, problems: &mut Vec<String>) -> Vec<Arc<str>> {
    let items = match record.get("files") {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::List(items)) => items,
        Some(other) => {
            problems.push(format!("`files` must be a list, not {}", other.type_name()));
            return Vec::new();
        }
    };
    let mut files = Vec::with_capacity(items.len());
    for item in items.iter() {
        match item {
            Value::Str(s) if s.chars().count() == FILE_ID_LEN => files.push(Arc::clone(s)),
            Value::Str(s) => problems.push(format!("file id `{s}` is not {FILE_ID_LEN} characters")),
            other => problems.push(format!("a file id must be a string, not {}", other.type_name())),
        }
    }
    files
}

/// A message at its latest version.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Message {
    /// Its id.
    pub id: Arc<str>,
    /// The sender.
    pub from: Arc<str>,
    /// The receiver.
    pub to: Arc<str>,
    /// When it was sent: the epoch (milliseconds) of the send.
    pub created: u64,
    /// When its text last changed (epoch milliseconds), if ever.
    pub edited: Option<u64>,
    /// Whether the receiver has read it.
    pub read: bool,
    /// Its text; empty once deleted.
    pub text: Arc<str>,
    /// Its attachments; empty once deleted.
    pub files: Vec<Arc<str>>,
    /// Whether it was deleted (blanked, kept so the deletion syncs).
    pub deleted: bool,
    /// Its latest change.
    pub timestamp: u64,
}

/// The outcome codes of spec/messages.md, in the order they are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Code {
    /// The op is malformed or would leave the message empty.
    Invalid,
    /// No such message, or not the caller's.
    NotFound,
    /// The caller may not do this to the message.
    Forbidden,
    /// The message is deleted.
    Gone,
    /// `if_match` is not the message's timestamp.
    Stale,
    /// The change would change nothing.
    NotModified,
}

impl Code {
    /// The code as the outputs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Invalid => "invalid",
            Code::NotFound => "not-found",
            Code::Forbidden => "forbidden",
            Code::Gone => "gone",
            Code::Stale => "stale",
            Code::NotModified => "not-modified",
        }
    }
}

/// Why an op was refused: its code and the reasons in words.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rejection {
    /// The outcome code.
    pub code: Code,
    /// What was wrong (every reason, for `invalid`).
    pub reasons: Vec<String>,
}

impl Rejection {
    fn new(code: Code, reason: impl Into<String>) -> Rejection {
        Rejection {
            code,
            reasons: vec![reason.into()],
        }
    }
}

/// Decides `op` at `timestamp` against the current version of its target message, returning
/// the new version or why not. The checks run in the order of the spec's table; the first
/// that fails is the outcome.
pub fn decide(op: &Op, timestamp: u64, current: Option<&Message>) -> Result<Message, Rejection> {
    let problems = match &op.command {
        Command::Send { problems, .. }
        | Command::Edit { problems, .. }
        | Command::MarkRead { problems, .. }
        | Command::Delete { problems, .. } => problems.clone(),
        Command::Unknown { op } => vec![format!(
            "unknown op `{op}`: expected `send`, `edit`, `mark_read` or `delete`"
        )],
    };
    if !problems.is_empty() {
        return Err(Rejection {
            code: Code::Invalid,
            reasons: problems,
        });
    }
    let epoch_ms = crate::timestamp_epoch(timestamp);
    if let Command::Send { to, text, files, .. } = &op.command {
        return Ok(Message {
            id: message_id(timestamp),
            from: Arc::clone(&op.user),
            to: Arc::from(to.trim()),
            created: epoch_ms,
            edited: None,
            read: false,
            text: Arc::clone(text),
            files: files.clone(),
            deleted: false,
            timestamp,
        });
    }
    let message = match current {
        Some(m) if m.from == op.user || m.to == op.user => m,
        _ => return Err(Rejection::new(Code::NotFound, "no such message")),
    };
    match &op.command {
        Command::Edit { .. } if message.from != op.user => {
            return Err(Rejection::new(Code::Forbidden, "only the sender may edit a message"));
        }
        Command::Edit { text, .. } if text.is_empty() && message.files.is_empty() => {
            return Err(Rejection::new(
                Code::Invalid,
                "the text of a message without files cannot be empty",
            ));
        }
        Command::MarkRead { .. } if message.to != op.user => {
            return Err(Rejection::new(
                Code::Forbidden,
                "only the receiver may mark a message read",
            ));
        }
        _ => {}
    }
    if message.deleted {
        return Err(Rejection::new(Code::Gone, "the message was deleted"));
    }
    let if_match = match &op.command {
        Command::Edit { if_match, .. } | Command::MarkRead { if_match, .. } | Command::Delete { if_match, .. } => {
            *if_match
        }
        Command::Send { .. } | Command::Unknown { .. } => message.timestamp,
    };
    if if_match != message.timestamp {
        return Err(Rejection::new(
            Code::Stale,
            format!("the message changed: its timestamp is {}", message.timestamp),
        ));
    }
    let mut next = message.clone();
    next.timestamp = timestamp;
    match &op.command {
        Command::Edit { text, .. } => {
            if *text == message.text {
                return Err(Rejection::new(Code::NotModified, "the text is the same"));
            }
            next.text = Arc::clone(text);
            next.edited = Some(epoch_ms);
        }
        Command::MarkRead { read, .. } => {
            if *read == message.read {
                return Err(Rejection::new(Code::NotModified, "the read state is the same"));
            }
            next.read = *read;
        }
        Command::Delete { .. } => {
            next.deleted = true;
            next.text = Arc::from("");
            next.files = Vec::new();
        }
        Command::Send { .. } | Command::Unknown { .. } => {}
    }
    Ok(next)
}
