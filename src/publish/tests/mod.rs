//! The publisher's tests against real sockets: the server, the client library, and
//! the allocation count of the publish path (helpers in `super::test_util`).

mod activation;
mod alloc;
mod client;
mod ownership;
mod refusals;
mod server;
