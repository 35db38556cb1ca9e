//! The speculum registry HTTP API (being written).
