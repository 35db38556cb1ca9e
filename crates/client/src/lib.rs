//! The speculum registry client (being written).
