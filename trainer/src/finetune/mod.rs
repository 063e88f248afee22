//! Fine-tuning (the book's chapters 6 and 7, appendix E): datasets and batching rules.

pub mod classify;
pub mod data;
pub mod instruct;
pub mod tune;

#[cfg(test)]
mod direct_tests;
