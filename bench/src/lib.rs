//! The benchmark harness: starts real servers as child processes, drives them over TLS from
//! this process, and reports every timing next to a baseline measured in the same run.

pub mod data;
pub mod load;
pub mod plugins;
pub mod report;
pub mod servers;
