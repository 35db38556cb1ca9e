//! Test fixtures for speculum (being written).
