//! The replication protocol: messages and their frame codec ([`message`]), the packing of
//! change bodies against a session's tables ([`pack`]), and the sans-IO
//! session state machine ([`session`]). Pure: no sockets, clocks, threads or storage. The node
//! runs a session inside its session host (`node/session_host.rs`), which `serve`'s QUIC driver
//! (`node/serve/driver.rs`) and the simulator drive; the tests run the same code.

pub mod message;
pub mod pack;
pub mod session;
