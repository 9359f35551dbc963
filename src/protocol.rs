//! The replication protocol: messages and their frame codec ([`message`]), the packing of
//! change bodies against a session's tables ([`pack`]), and the sans-IO
//! session state machine ([`session`]). Pure: no sockets, clocks, threads or storage. The QUIC
//! driver (`transport`), the simulator and the tests all run this same code.

pub mod message;
pub mod pack;
pub mod session;
