//! Credentials shared by sluice's servers and connectors: HS256 JSON Web Tokens, used by the
//! messages feed (who is calling) and the publish endpoint (who may publish).

pub mod jwt;
