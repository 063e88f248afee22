//! Layers, each with `forward` directly above `backward`. (being written)
