//! virtio-blk backed by a raw image file, read-only or read-write.

mod device;
mod event_handler;
mod request;

pub use device::{Block, BlockError};
