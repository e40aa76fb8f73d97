//! One module per subcommand.

pub(crate) mod attachments;
pub(crate) mod bench;
pub(crate) mod connect;
pub(crate) mod serve;
