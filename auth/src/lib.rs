//! What secures sluice's endpoints: HS256 JSON Web Tokens, used by the messages feed (who
//! is calling) and the publish endpoint (who may publish), and TLS for the publish endpoint
//! and the gRPC and HTTP servers.

pub mod jwt;
pub mod tls;
