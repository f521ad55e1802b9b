//! The servers end to end: a started server on 127.0.0.1:0, views fed by hand, generated
//! tonic clients and a bare HTTP/1.1 client.

mod account_stream;
mod messages;
mod support;
mod views;
