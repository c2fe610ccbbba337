//! The on-disk format of a checkpoint.
//!
//! One directory per checkpoint id under the store. Inside it, per host and per process, a
//! metadata record (`meta.img`) and a page store (`pages.img`); the global `MANIFEST` is written
//! last and its presence is the commit point. Every record carries a magic, a format version and a
//! CRC32C of its payload, so a torn, truncated or corrupted file is refused with a clear message.
//! Per host, `files.img` and `files.blocks` hold the files a restore puts back or checks (see
//! [`files`]). Everything in the store is its owner's alone (folders 0700, files 0600, see
//! [`private`]).

pub mod aio;
pub mod attrs;
mod behind;
mod blocks;
mod error;
pub mod files;
mod fold;
mod header;
mod image;
pub mod lazy;
mod manifest;
mod pages;
pub mod private;
mod record;
mod stdio;
mod store;
mod sysv;
pub mod tree;

pub use blocks::{block_hash, open_block_stores, BlockStoreReader, BlockStoreWriter};
pub use error::FormatError;
pub use files::*;
pub use image::*;
pub use manifest::*;
pub use pages::{read_runs_into, PageStoreReader, PageStoreWriter, RunScratch, PAGE_SIZE, RUN_MAX_BYTES};
pub use record::{read_record, write_record, RecordKind, FORMAT_VERSION};
pub use stdio::StdioPeers;
pub use store::{CheckpointDir, Store};
pub use sysv::SysvImage;
