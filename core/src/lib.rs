//! carpool's pure rules, shared by the worker (which carries them out) and the
//! coordinator's simulator (which models workers with them). Nothing here does I/O or
//! depends on an async runtime: every rule takes what it decides on as an argument, so it
//! is unit-tested on scripted sequences and runs the same in the simulator as in a worker.

pub mod pace;
