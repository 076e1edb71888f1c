//! Provider simulators (being written).
