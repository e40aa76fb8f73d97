//! A server connection against a hostile client; see `roost_fuzz::single` for the invariants.

#![no_main]

use libfuzzer_sys::fuzz_target;
use roost_fuzz::single::{SingleInput, run};
use roost_proto::Role;

fuzz_target!(|input: SingleInput| run(Role::Server, input));
