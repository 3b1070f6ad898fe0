//! virtio-conform: a conformance test harness and fuzzer for virtio-mmio device
//! implementations. The harness plays the guest driver and checks the device against the
//! VIRTIO specification (1.2/1.3 numbering), citing the normative statement broken.

#![forbid(unsafe_code)]

pub mod case;
pub mod catalog;
pub mod diff;
pub mod expectations;
pub mod fuzz;
pub mod matrix;
pub mod outcome;
pub mod records;
pub mod report;
pub mod runner;
pub mod suite;
pub mod target;
pub mod trace;
mod worker;
