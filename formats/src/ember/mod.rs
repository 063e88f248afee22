//! The .ember model file. (being written)
