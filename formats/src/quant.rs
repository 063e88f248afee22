//! Reference quantizers. (being written)
