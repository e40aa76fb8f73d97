//! The applications `roost serve --app` runs on roost-server.

pub(crate) mod bench;
pub(crate) mod chat;
