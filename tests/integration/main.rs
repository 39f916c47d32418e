//! Integration tests: the real `maskd` executable, each test in its own
//! directory with its own config and socket. Modules by area; try not to add
//! a `misc`.

mod util;

mod bench;
mod cli_errors;
mod daemon;
mod layout;
mod reload;
mod soak;
mod socket;
mod sparsify;
mod text_models;
