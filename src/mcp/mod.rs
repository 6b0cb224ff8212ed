//! What MCP looks like on the wire: which kind of request this is, which session it names, who
//! owns that session, how a session id is sealed for the client, and where SSE events end.
//! Nothing here knows about backends, configuration or sockets.

pub mod classify;
pub mod hash;
pub mod identity;
pub mod seal;
pub mod session;
pub mod sse;
