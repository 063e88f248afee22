//! Compute kernels: reference twins and architecture-specific fast paths. (being written)
