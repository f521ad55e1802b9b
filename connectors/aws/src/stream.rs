//! What the Kinesis source and sink share about naming a stream in requests.

use std::fmt;

/// A Kinesis stream named by name or by ARN (`arn:…`), which requests carry in different fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamRef {
    /// `StreamName`.
    Name(String),
    /// `StreamARN`.
    Arn(String),
}

impl StreamRef {
    /// The stream `spec` names: an ARN if it starts with `arn:`, else a name.
    pub fn parse(stream: &str) -> StreamRef {
        if stream.starts_with("arn:") {
            StreamRef::Arn(stream.to_owned())
        } else {
            StreamRef::Name(stream.to_owned())
        }
    }

    /// The `StreamName` field of a request.
    pub fn name(&self) -> Option<String> {
        match self {
            StreamRef::Name(n) => Some(n.clone()),
            StreamRef::Arn(_) => None,
        }
    }

    /// The `StreamARN` field of a request.
    pub fn arn(&self) -> Option<String> {
        match self {
            StreamRef::Arn(a) => Some(a.clone()),
            StreamRef::Name(_) => None,
        }
    }
}

impl fmt::Display for StreamRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamRef::Name(s) | StreamRef::Arn(s) => f.write_str(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_named_or_given_by_arn() {
        assert_eq!(StreamRef::parse("orders"), StreamRef::Name("orders".to_owned()));
        let arn = "arn:aws:kinesis:us-east-1:123456789012:stream/orders";
        let s = StreamRef::parse(arn);
        assert_eq!((s.name(), s.arn()), (None, Some(arn.to_owned())));
        assert_eq!(s.to_string(), arn);
    }
}
